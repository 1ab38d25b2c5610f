"""Realistic Audit Trail events to send: one default event, and scenarios such as "day" (the
Audit Trail report in DESIGN.md section 4, replayed in time order).

Pure data and small builders, no I/O and nothing heavy imported. An event is the dict that
goes out as JSON, with Order Time's field names in Order Time's order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

Event = dict[str, Any]

# Ids start from the clock (microseconds since 2020) so that runs never reuse each other's
# Ids: no run sends more than one delivery per microsecond. They stay below 2**53, so a
# JavaScript receiver reads them exactly.
ID_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)

DEFAULT_USERNAME = "Jimmy Hendrix"


def clock_id(now: datetime) -> int:
    """A first Id derived from `now`, larger than any an earlier run started from."""
    return (now - ID_EPOCH) // timedelta(microseconds=1)


def dotnet_date(moment: datetime) -> str:
    """ActionDate as Order Time writes it: UTC, seven fractional digits (.NET ticks), Z."""
    utc = moment.astimezone(UTC)
    ticks = utc.microsecond * 10  # Python keeps microseconds; .NET ticks are 100 ns
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + f".{ticks:07d}Z"


def event(
    event_id: int,
    action_type: int,
    record_type: int,
    unique_id: int | str,
    description: str = "",
    username: str = DEFAULT_USERNAME,
    action_date: str = "",
) -> Event:
    return {
        "Id": event_id,
        "ActionType": action_type,
        "RecordType": record_type,
        "UniqueId": unique_id,
        "Description": description,
        "Username": username,
        "ActionDate": action_date,
    }


def default_event(event_id: int, now: datetime | str) -> Event:
    """The help page's own sample: a sales order approved, dated `now` (or that date text)."""
    date = now if isinstance(now, str) else dotnet_date(now)
    return event(event_id, 4, 7, 890, "Status Changed to Approved", DEFAULT_USERNAME, date)


# The Audit Trail report of DESIGN.md section 4 ----------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of an Audit Trail report: when (UTC), action, record, number, description."""

    at: datetime
    action_type: int
    record_type: int
    unique_id: int | str
    description: str = ""
    username: str = DEFAULT_USERNAME


def _at(day: int, hour: int, minute: int, second: int, micro: int) -> datetime:
    return datetime(2022, 1, day, hour, minute, second, micro, tzinfo=UTC)


CREATE, MODIFY, CHANGE_STATUS = 1, 2, 4
WORK_ORDER, ITEM, SALES_ORDER, PAYMENT, PURCHASE_ORDER, RECEIVER = 3, 100, 7, 660, 6, 2

# As the report lists them (one row is dated the day before); the report shows minutes only,
# so seconds and fractions are made up to keep the order strict and the dates realistic.
DAY_REPORT = (
    Row(_at(3, 10, 17, 4, 151_273), CREATE, WORK_ORDER, 556, "", "Ann Miller"),
    Row(_at(3, 10, 18, 37, 600_412), CHANGE_STATUS, WORK_ORDER, 556,
        "Status Changed to Ready", "Ann Miller"),
    Row(_at(3, 10, 22, 9, 48_190), CREATE, ITEM, "E402-EGGS", "", "Raj Patel"),
    Row(_at(3, 10, 23, 51, 930_006), MODIFY, ITEM, "E402-EGGS", "", "Raj Patel"),
    Row(_at(3, 10, 26, 12, 217_845), CHANGE_STATUS, SALES_ORDER, 1877,
        "Status Changed to Approved"),
    Row(_at(3, 10, 26, 40, 502_371), CREATE, PAYMENT, 1645),
    Row(_at(2, 10, 30, 15, 777_120), CHANGE_STATUS, PURCHASE_ORDER, 56,
        "Status Changed to Sent", "Ann Miller"),
    Row(_at(3, 10, 30, 2, 364_998), CREATE, RECEIVER, 756, "", "Luis Gomez"),
    Row(_at(3, 10, 31, 19, 85_514), CHANGE_STATUS, PURCHASE_ORDER, 56,
        "Status Changed to Closed", "Luis Gomez"),
    Row(_at(3, 10, 31, 44, 640_203), CHANGE_STATUS, RECEIVER, 756,
        "Status Changed to Received", "Luis Gomez"),
    Row(_at(3, 10, 41, 26, 911_867), CHANGE_STATUS, WORK_ORDER, 556,
        "Status Changed to Closed", "Ann Miller"),
)

SCENARIOS: dict[str, tuple[str, tuple[Row, ...]]] = {
    "day": ("A day of the Audit Trail report: work order, item, sales order, payment, "
            "purchase order and receiver, in time order", DAY_REPORT),
}


def scenario_events(name: str, first_id: int, count: int | None = None) -> Iterator[Event]:
    """The scenario's rows sorted by time, with consecutive Ids from `first_id`.

    With `count` beyond one round, the day repeats, each round a day later, Ids still rising.
    """
    rows = sorted(SCENARIOS[name][1], key=lambda row: row.at)
    total = len(rows) if count is None else count
    for index in range(total):
        rounds, position = divmod(index, len(rows))
        row = rows[position]
        yield event(first_id + index, row.action_type, row.record_type, row.unique_id,
                    row.description, row.username, dotnet_date(row.at + timedelta(days=rounds)))


def body(obj: Event) -> bytes:
    """The bytes that go out: compact JSON, as a .NET serializer writes it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


# What send-sample sends ------------------------------------------------------------------


def generate(
    count: int | None,
    first_id: int,
    *,
    scenario: str | None = None,
    fixed_id: int | None = None,
    overrides: dict[str, Any] | None = None,
    now: datetime,
) -> Iterator[Event]:
    """The default event `count` times (Ids rising from `first_id`), or a scenario; `fixed_id`
    gives every event the same Id (to test duplicates), `overrides` replace fields."""
    if scenario is not None:
        events: Iterator[Event] = scenario_events(scenario, first_id, count)
    else:
        date = dotnet_date(now)  # once: formatting it per event costs a visible share
        events = (default_event(first_id + i, date) for i in range(count or 1))
    for item in events:
        if fixed_id is not None:
            item["Id"] = fixed_id
        item.update(overrides or {})
        yield item


def scenario_size(name: str) -> int:
    return len(SCENARIOS[name][1])


class BadInput(ValueError):
    """Events given in a file that cannot be sent; the message says where."""


def split_bodies(data: bytes) -> list[bytes]:
    """The bodies in a file, each byte for byte as written: a JSON object (the whole file), a
    JSON array of objects (each element), or JSON Lines (each non-blank line)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"not UTF-8 (byte {exc.start})") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise BadInput("no events: it is empty")
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        return _json_lines(data)
    if isinstance(whole, dict):
        return [data]
    if isinstance(whole, list):
        if not whole:
            raise BadInput("no events: it is an empty array")
        return _array_items(text, whole)
    raise BadInput(f"expected JSON objects, got {type(whole).__name__}")


def _json_lines(data: bytes) -> list[bytes]:
    bodies = []
    for number, line in enumerate(data.split(b"\n"), 1):
        line = line.removesuffix(b"\r")
        if not line.strip():
            continue
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        try:
            obj = json.loads(line)
        except RecursionError:
            raise BadInput(f"line {number} is not JSON: nested too deeply") from None
        except ValueError as exc:
            raise BadInput(f"line {number} is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise BadInput(f"line {number} is not a JSON object")
        bodies.append(line)
    return bodies


def _array_items(text: str, items: list[Any]) -> list[bytes]:
    """Each element of a JSON array as its own text, cut out of the file, not re-serialized."""
    if not all(isinstance(item, dict) for item in items):
        raise BadInput("the array holds something other than JSON objects")
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    bodies = []
    for _ in items:
        start = _skip(text, position, " \t\r\n")
        _, end = decoder.raw_decode(text, start)
        bodies.append(text[start:end].encode())
        position = _skip(text, end, " \t\r\n,")
    return bodies


def _skip(text: str, position: int, chars: str) -> int:
    while position < len(text) and text[position] in chars:
        position += 1
    return position
