"""The code tables: DESIGN.md section 4 exactly, each entry reachable by code and by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from ot_hook import codes
from ot_hook.codes import ACTIONS, BUILTIN, RECORDS, Code, Source
from ot_hook.decode import LookupFailed, lookup_code, lookup_name

ALL = BUILTIN.entries()


def test_the_tables_are_the_documented_ones() -> None:
    assert {c: e.name for c, e in ACTIONS.items()} == {
        1: "Create", 2: "Modify", 3: "Delete", 4: "Change Status"}
    assert ACTIONS[4].source is Source.DOCUMENTED
    assert {ACTIONS[c].source for c in (1, 2, 3)} == {Source.UNCONFIRMED}
    assert len(RECORDS) == 72
    assert RECORDS[1070].name == "Ship Doc Line Item"
    assert RECORDS[1100].name == "Lot or Serial Number"
    older = {c for c, e in RECORDS.items() if e.source is Source.OLDER}
    assert older == {100, 284, 1110, 1111, 1112, 2600, 2610, 2620, 3080}
    assert {e.source for e in ALL} <= {Source.DOCUMENTED, Source.UNCONFIRMED, Source.OLDER}


@pytest.mark.parametrize("entry", ALL, ids=lambda e: f"{e.kind}-{e.code}")
def test_every_entry_both_ways(entry: Code) -> None:
    assert lookup_code(BUILTIN, entry.code, entry.kind) == [entry]
    assert lookup_name(BUILTIN, entry.name, entry.kind) == [entry]
    shouted = entry.name.upper().replace(" ", "_")
    assert lookup_name(BUILTIN, f"  {shouted} ", entry.kind) == [entry]


def test_names_are_unique_as_compared() -> None:
    for kind in codes.KINDS:
        names = [codes.normalize(e.name) for e in BUILTIN.entries(kind)]
        assert len(names) == len(set(names))


def test_the_receivers_helpers_keep_their_meaning() -> None:
    assert codes.action_name(4) == "Change Status"
    assert codes.record_name(7) == "Sales Order"
    assert codes.action_name(99) is None and codes.record_name(99) is None


def test_normalize_ignores_case_spaces_hyphens_and_underscores() -> None:
    assert codes.normalize(" Ship-Doc_line  ITEM") == "shipdoclineitem"


def test_with_entries_adds_and_overrides_without_touching_the_builtins() -> None:
    login = Code("action", 5, "Login", Source.USER)
    mine = Code("record", 7, "My Sales Order", Source.USER)
    tables = BUILTIN.with_entries([login, mine])
    assert tables.get("action", 5) == login
    assert tables.get("record", 7) == mine
    assert BUILTIN.get("action", 5) is None
    assert RECORDS[7].name == "Sales Order"


def test_entries_are_in_order_actions_first() -> None:
    assert [(e.kind, e.code) for e in ALL[:5]] == [
        ("action", 1), ("action", 2), ("action", 3), ("action", 4), ("record", 1)]


def test_unknown_code_is_never_guessed() -> None:
    with pytest.raises(LookupFailed, match="unknown RecordType 1071"):
        lookup_code(BUILTIN, 1071, "record")
    with pytest.raises(LookupFailed, match="unknown ActionType or RecordType 9999"):
        lookup_code(BUILTIN, 9999)


def test_user_codes_reach_every_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ot_hook.cli import main
    from ot_hook.tail import FilterError, resolve_filters

    user = tmp_path / "codes.toml"
    user.write_text('[actions]\n5 = "Login"\n')
    monkeypatch.setenv("OT_HOOK_CODES", str(user))
    try:
        assert main(["prune", "--help"]) == 0  # any command: the root loads the file
        capsys.readouterr()
        assert codes.action_name(5) == "Login"
        assert resolve_filters(actions=["login"]).actions == (5,)
    finally:
        monkeypatch.delenv("OT_HOOK_CODES")
        assert main(["prune", "--help"]) == 0
        capsys.readouterr()
    assert codes.action_name(5) is None
    with pytest.raises(FilterError):
        resolve_filters(actions=["login"])
