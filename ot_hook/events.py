"""The Audit Trail object: parse a delivery's bytes, validate it, and say what is odd about it.

Liberal in what it accepts (any content type, a BOM, extra fields, odd dates become warnings),
exact in what it refuses: bad JSON is a `BadJSON` (HTTP 400), JSON that is not an Audit Trail
object is a `NotAnEvent` (HTTP 422). Both carry a one-line reason that is safe to show.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from ot_hook import codes
from ot_hook.textsafe import printable

REQUIRED_INT_FIELDS = ("Id", "ActionType", "RecordType")

KNOWN_FIELDS = frozenset(
    {"Id", "ActionType", "RecordType", "UniqueId", "Description", "Username", "ActionDate"}
)
# SQLite keeps integers in 64 bits; an Id beyond that cannot be indexed for duplicates.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# .NET writes UTC with 0 to 7 fractional digits and "Z"; accept an explicit offset too.
ACTION_DATE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?(Z|[+-]\d{2}:\d{2})$"
)


def parse_action_date(text: str) -> datetime | None:
    """The moment an ActionDate names, or None when it is not the ISO 8601 we expect."""
    match = ACTION_DATE.match(text)
    if not match:
        return None
    # datetime takes at most 6 fractional digits; a 7th (.NET ticks) only adds 100 ns.
    fraction = (match.group(1) or "")[:7]
    offset = match.group(2).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text[:19] + fraction + offset)
    except ValueError:  # a month 13, a 25th hour
        return None


class InvalidDelivery(ValueError):
    """A delivery we refuse; `status` is the HTTP status to answer with."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadJSON(InvalidDelivery):
    status = 400


class NotAnEvent(InvalidDelivery):
    status = 422


# Not frozen: on the delivery path a frozen dataclass costs about 2 us more per instance.
@dataclass(slots=True)
class AuditEvent:
    """The fields of a valid Audit Trail object."""

    id: int
    action_type: int
    record_type: int
    unique_id: int | str
    description: str | None
    username: str | None
    action_date: str | None
    warnings: tuple[str, ...] = ()

    def key(self) -> EventKey:
        return EventKey(self.id, self.action_type, self.record_type, self.unique_id)


class EventKey(NamedTuple):
    """What a log line names an event by."""

    id: int
    action_type: int
    record_type: int
    unique_id: int | str


class _DuplicateKey(ValueError):
    pass


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)  # built in C; a key seen twice leaves fewer entries than pairs
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _reject_constant(name: str) -> Any:
    raise BadJSON(f"invalid JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    """A fraction or exponent; one too large for a float (1e400) would become inf."""
    value = float(text)
    if not math.isfinite(value):
        raise NotAnEvent(f"the number {text[:40]}{'...' if len(text) > 40 else ''} "
                         "is too large to read")
    return value


def decode_text(body: bytes) -> str:
    """UTF-8 with or without a byte order mark; anything else is a `BadJSON`."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJSON(f"body is not valid UTF-8 (byte {exc.start})") from None


# One decoder for every delivery: json.loads with hooks would build a new one each time.
_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicate_keys,
                            parse_constant=_reject_constant, parse_float=_finite_float)


def loads(text: str) -> Any:
    """Strict JSON: no NaN or Infinity, no key twice, bounded nesting and number size."""
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise BadJSON(  # json's "Invalid control character at" gives the place apart
            f"invalid JSON at line {exc.lineno} column {exc.colno}: "
            f"{exc.msg.removesuffix(' at')}"
        ) from None
    except _DuplicateKey as exc:
        raise NotAnEvent(f"key {json.dumps(str(exc))} appears more than once") from None
    except RecursionError:
        raise BadJSON("invalid JSON: nested too deeply") from None
    except InvalidDelivery:  # NaN or Infinity
        raise
    except ValueError:  # Python refuses to turn so many digits into an int
        raise NotAnEvent(
            f"a number has more than {sys.get_int_max_str_digits()} digits"
        ) from None


def parse_body(body: bytes) -> AuditEvent:
    """Parse a delivery's raw bytes into a validated event, or raise `InvalidDelivery`."""
    if not body.strip():
        raise BadJSON("empty body: expected one Audit Trail JSON object")
    text = decode_text(body)
    usual = _USUAL_SHAPE.match(text)
    if usual is not None:
        return _usual_event(*usual.groups())
    return validate(loads(text))


# The object as Order Time writes it: the seven fields in this order, integer codes, and
# strings that are not empty and hold no escape or control character. One regular expression
# reads it in a third of the time the JSON parser and `validate` take (the writer does this
# for every delivery); anything else takes that full path. tests/test_events.py checks that
# both paths give the same event for bodies of this shape and near it.
_WS = r"[ \t\n\r]*"
_INT = r"(-?(?:0|[1-9][0-9]{0,17}))"  # at most 18 digits: always within 64 bits
_TEXT = r'"([^"\\\x00-\x1f]+)"'


def _field(name: str, value: str) -> str:
    return f'{_WS}"{name}"{_WS}:{_WS}{value}{_WS}'


_USUAL_SHAPE = re.compile(
    _WS + r"\{"
    + ",".join([_field("Id", _INT), _field("ActionType", _INT), _field("RecordType", _INT),
                _field("UniqueId", f"(?:{_INT}|{_TEXT})"), _field("Description", _TEXT),
                _field("Username", _TEXT), _field("ActionDate", _TEXT)])
    + r"\}" + _WS + r"\Z"
)


def _usual_event(event_id: str, action: str, record: str, number: str | None,
                 text_id: str | None, description: str, username: str,
                 action_date: str) -> AuditEvent:
    """The event of a body `_USUAL_SHAPE` matched, with the warnings `validate` would give."""
    identifier, action_type, record_type = int(event_id), int(action), int(record)
    warnings = []
    if identifier <= 0:
        warnings.append(_id_warning(identifier))
    if codes.action_name(action_type) is None:
        warnings.append(f"unknown ActionType {action_type}")
    if codes.record_name(record_type) is None:
        warnings.append(f"unknown RecordType {record_type}")
    if parse_action_date(action_date) is None:
        warnings.append(_ACTION_DATE_WARNING)
    return AuditEvent(identifier, action_type, record_type,
                      int(number) if number is not None else text_id,  # type: ignore[arg-type]
                      description, username, action_date, tuple(warnings))


def _id_warning(event_id: int) -> str:
    return f"Id {event_id} is not positive (Order Time numbers its Audit Trail from 1)"


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@functools.lru_cache(maxsize=64)  # a sender repeats its Content-Type
def content_type_warning(content_type: str | None) -> str | None:
    """What is odd about a delivery's Content-Type (Order Time sends application/json in
    UTF-8); None when nothing is, or when there is none. The body is read as JSON anyway."""
    if content_type is None:
        return None
    media = content_type.partition(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        return f"Content-Type is {printable(media) or 'empty'}, not application/json"
    charset = foreign_charset(content_type)
    if charset is not None:
        return f"Content-Type declares charset={charset}; the body was read as UTF-8"
    return None


def foreign_charset(content_type: str) -> str | None:
    """The charset a Content-Type declares, when it is not UTF-8 (shown safely)."""
    for parameter in content_type.partition(";")[2].split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"')
            return None if charset.lower() in ("utf-8", "utf8") else printable(charset)
    return None


def json_type_name(value: Any) -> str:
    """What a parsed JSON value is, for messages: "a string", "an array", "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


_MISSING = object()
_ACTION_DATE_WARNING = "ActionDate is not ISO 8601 with 0 to 7 fractional digits and Z or an offset"
TEXT_FIELDS = ("Description", "Username", "ActionDate")


def validate(obj: Any) -> AuditEvent:
    """Check that a parsed JSON value is an Audit Trail object; collect warnings for oddities.

    Written for the usual delivery (every check that passes costs one comparison): it runs
    for every request on the receiver's event loop.
    """
    if type(obj) is not dict:
        if isinstance(obj, list):
            raise NotAnEvent(
                f"expected one Audit Trail object, got an array of {len(obj)} items"
            )
        raise NotAnEvent(f"expected an Audit Trail object, got {json_type_name(obj)}")
    ints: list[int] = []
    for name in REQUIRED_INT_FIELDS:
        value = obj.get(name, _MISSING)
        if type(value) is not int:  # type(), not isinstance: true and false are not integers
            if value is _MISSING:
                raise NotAnEvent(f"field {name} is missing")
            raise NotAnEvent(f"field {name} must be an integer, got {json_type_name(value)}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise NotAnEvent(f"field {name} is out of range")
        ints.append(value)
    event_id, action_type, record_type = ints
    unique_id = obj.get("UniqueId", _MISSING)
    if type(unique_id) not in (int, str):
        if unique_id is _MISSING:
            raise NotAnEvent("field UniqueId is missing")
        if type(unique_id) is not float:
            raise NotAnEvent(
                f"field UniqueId must be a number or a string, got {json_type_name(unique_id)}"
            )
        unique_id = str(unique_id)

    warnings: list[str] = []
    if event_id <= 0:
        warnings.append(_id_warning(event_id))
    if isinstance(unique_id, str) and type(obj["UniqueId"]) is float:
        # Kept as text; the raw body keeps the digits as sent (a float may have rounded them).
        warnings.append(f"UniqueId is not a whole number (read as {unique_id})")
    if codes.action_name(action_type) is None:
        warnings.append(f"unknown ActionType {action_type}")
    if codes.record_name(record_type) is None:
        warnings.append(f"unknown RecordType {record_type}")
    texts: list[str | None] = []
    for name in TEXT_FIELDS:
        value = obj.get(name, _MISSING)
        if type(value) is str and value and (value.isascii() or not _has_lone_surrogate(value)):
            texts.append(value)
            continue
        if value is _MISSING:
            warnings.append(f"{name} is missing")
            value = None
        elif value is None:
            warnings.append(f"{name} is null")
        elif not isinstance(value, str):
            warnings.append(f"{name} is {json_type_name(value)}, expected a string")
            value = json.dumps(value)
        elif value == "":
            warnings.append(f"{name} is empty")
        else:
            warnings.append(f"{name} has an unpaired UTF-16 surrogate escape")
        texts.append(value)
    description, username, action_date = texts
    if action_date and parse_action_date(action_date) is None:
        warnings.append(_ACTION_DATE_WARNING)
    extra = obj.keys() - KNOWN_FIELDS
    if extra:
        warnings.append("extra fields: " + ", ".join(sorted(extra)))

    return AuditEvent(
        id=event_id,
        action_type=action_type,
        record_type=record_type,
        unique_id=unique_id,
        description=description,
        username=username,
        action_date=action_date,
        warnings=tuple(warnings),
    )
