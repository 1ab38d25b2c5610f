"""Order Time's ActionType and RecordType codes, with where each one comes from.

Pure data and lookups: no I/O, nothing heavy imported, so `decode` and the receiver's log
lines can use it cheaply. The sources are described in ../shared/DESIGN.md section 4.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Kind = Literal["action", "record"]
KINDS: tuple[Kind, ...] = ("action", "record")
FIELDS: dict[Kind, str] = {"action": "ActionType", "record": "RecordType"}


class Source(StrEnum):
    DOCUMENTED = "documented"  # on Order Time's enums or webhook help page
    UNCONFIRMED = "unconfirmed"  # seen in a public receiver, not documented
    OLDER = "older"  # from older lists and public code, still seen in deliveries
    USER = "user"  # added by the user's own codes file


@dataclass(frozen=True)
class Code:
    kind: Kind
    code: int
    name: str
    source: Source


def _table(kind: Kind, source: Source, entries: dict[int, str]) -> dict[int, Code]:
    return {code: Code(kind, code, name, source) for code, name in entries.items()}


ACTIONS: dict[int, Code] = {
    # The webhook page documents only Change Status; the others were seen in a public
    # receiver. The Audit Trail report also shows "Login", whose code nobody has published.
    **_table("action", Source.UNCONFIRMED, {1: "Create", 2: "Modify", 3: "Delete"}),
    **_table("action", Source.DOCUMENTED, {4: "Change Status"}),
}

RECORDS: dict[int, Code] = {
    **_table(
        "record",
        Source.DOCUMENTED,
        {
            1: "Adjustment",
            2: "Receiver",
            3: "Work Order",
            4: "Ship Doc",
            5: "Transfer",
            6: "Purchase Order",
            7: "Sales Order",
            8: "Vendor Return",
            9: "Disassembly",
            10: "Customer Return",
            13: "Quote",
            101: "Part Item",
            102: "Kit Item",
            103: "Non Part Item",
            105: "Service Item",
            107: "Assembly Item",
            108: "Other Charge Item",
            115: "Item All",
            120: "Customer",
            121: "Customer Address",
            122: "Contact",
            130: "Vendor",
            150: "Location",
            151: "Bin",
            160: "UOM",
            162: "UOM Set",
            170: "Currency",
            180: "Item Group",
            190: "Term",
            200: "Payment Method",
            220: "Manufacturer",
            230: "Related Items",
            250: "Ship Method",
            260: "FOB",
            270: "Discount",
            280: "Price Level",
            282: "Price Level Item Price",
            300: "Customer Type",
            310: "Item Vendor",
            320: "Sales Tax Code",
            330: "Customer Alias",
            350: "Account",
            370: "Sales Rep",
            380: "Class",
            385: "Order Source",
            390: "Tax Item",
            500: "Lead",
            510: "Lead Status",
            610: "Warranty Type",
            630: "Doc Status",
            660: "Payment",
            850: "Kit Component",
            860: "Kit Selection",
            1000: "Sales Order Line Item",
            1010: "Attachment",
            1040: "Purchase Order Line Item",
            1054: "Task",
            1060: "Item Image",
            1070: "Ship Doc Line Item",
            1080: "Receiver Line Item",
            1090: "Adjustment Line Item",
            1095: "Transfer Line Item",
            1100: "Lot or Serial Number",
        },
    ),
    **_table(
        "record",
        Source.OLDER,
        {
            100: "Item",
            284: "Volume Price Level Detail",
            1110: "Inventory",
            1111: "Inventory Status by Item",
            1112: "Inventory Status by Location",
            2600: "Item Transaction",
            2610: "On Order Detail",
            2620: "Required Detail",
            3080: "Item Bar code",
        },
    ),
}


def normalize(name: str) -> str:
    """A name as compared: case, spaces, hyphens and underscores do not matter."""
    return _IGNORED.sub("", name).casefold()


_IGNORED = re.compile(r"[\s_-]+")


@dataclass(frozen=True)
class Tables:
    """Both tables, so that a user's own codes can be added without touching the built-ins."""

    actions: Mapping[int, Code]
    records: Mapping[int, Code]

    def table(self, kind: Kind) -> Mapping[int, Code]:
        return self.actions if kind == "action" else self.records

    def get(self, kind: Kind, code: int) -> Code | None:
        return self.table(kind).get(code)

    def entries(self, kind: Kind | None = None) -> list[Code]:
        """Every entry, actions first, each table in code order."""
        kinds = KINDS if kind is None else (kind,)
        return [self.table(k)[c] for k in kinds for c in sorted(self.table(k))]

    def with_entries(self, extra: Iterable[Code]) -> Tables:
        """These tables with `extra` added, replacing built-in entries with the same code."""
        actions, records = dict(self.actions), dict(self.records)
        for entry in extra:
            (actions if entry.kind == "action" else records)[entry.code] = entry
        return Tables(actions, records)

    def named(self, name: str, kind: Kind | None = None) -> list[Code]:
        """The entries whose name is `name`, as `normalize` compares them."""
        wanted = normalize(name)
        return [e for e in self.entries(kind) if normalize(e.name) == wanted]

    def near(self, name: str, kind: Kind | None = None) -> tuple[list[Code], list[Code]]:
        """(entries whose name contains `name`, entries spelt like it): never an answer by
        themselves, only choices to offer the user."""
        import difflib  # only a miss pays for it

        wanted = normalize(name)
        entries = self.entries(kind)
        containing = [e for e in entries if wanted and wanted in normalize(e.name)]
        by_key = {normalize(e.name): e for e in entries}
        spelt = difflib.get_close_matches(wanted, list(by_key), n=3, cutoff=0.75)
        return containing, [by_key[key] for key in spelt]


BUILTIN = Tables(ACTIONS, RECORDS)
_active = BUILTIN  # what every command looks codes up in; the CLI adds the user's codes file


def use(tables: Tables) -> None:
    """Make `tables` (the built-in ones and the user's, say) the ones every lookup sees."""
    global _active
    _active = tables


def active() -> Tables:
    return _active


def action_name(code: int) -> str | None:
    entry = _active.get("action", code)
    return entry.name if entry else None


def record_name(code: int) -> str | None:
    entry = _active.get("record", code)
    return entry.name if entry else None
