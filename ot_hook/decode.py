"""Decoding Order Time's codes: lookups both ways, the user's own codes, and streams of events.

The library under `ot-hook decode`. Streams are read line by line and written as they come, so a
million JSON lines never sit in memory; a pipe may be live (`tail -f log | ot-hook decode -`).
Errors are `DecodeError`s whose message is one line, safe to show.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ot_hook.codes import BUILTIN, FIELDS, KINDS, Code, Kind, Source, Tables, active
from ot_hook.events import json_type_name
from ot_hook.textsafe import printable

if TYPE_CHECKING:
    from rich.console import Console

NAME_FIELDS: dict[Kind, str] = {"action": "ActionTypeName", "record": "RecordTypeName"}
TABLE_WORDS: dict[str, Kind | None] = {"all": None, "actions": "action", "records": "record"}


class DecodeError(Exception):
    """Something we cannot decode; the message is one line, safe to show."""


class LookupFailed(DecodeError):
    """An unknown code, or a name that is unknown or ambiguous."""


class BadInput(DecodeError):
    """Malformed input: JSON, a non-object where an event belongs, or a bad codes file."""


# The user's own codes -----------------------------------------------------------------------

_CODE_KEY = re.compile(r"[0-9]{1,9}")  # ASCII digits: \d would read "٤" as 4
_SECTIONS: dict[str, Kind] = {"actions": "action", "records": "record"}


def load_tables(path: Path | None) -> Tables:
    """The built-in tables, with the user's codes file (TOML) on top when there is one."""
    if path is None:
        return BUILTIN
    import tomllib  # only a codes file pays for it

    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise BadInput(f"cannot read codes file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"codes file {path} is not valid TOML: {exc}") from None
    return BUILTIN.with_entries(parse_codes(data, str(path)))


def parse_codes(data: dict[str, Any], where: str) -> list[Code]:
    """Entries from a codes file such as `[actions]` / `5 = "Login"`, marked as the user's."""
    entries: list[Code] = []
    for section, table in data.items():
        kind = _SECTIONS.get(section)
        if kind is None or not isinstance(table, dict):
            raise BadInput(
                f"codes file {where}: unexpected {printable(section)!r}; "
                "use tables [actions] and [records] of code = \"Name\""
            )
        for key, name in table.items():
            if not _CODE_KEY.fullmatch(key):
                raise BadInput(
                    f"codes file {where}: [{section}] key {printable(key)!r} is not a code "
                    "(a whole number of at most 9 digits)"
                )
            if not isinstance(name, str) or not name.strip() or printable(name) != name:
                raise BadInput(
                    f"codes file {where}: [{section}] {key} must be a name on one line"
                )
            entries.append(Code(kind, int(key), name.strip(), Source.USER))
    return entries


# Lookups -------------------------------------------------------------------------------------

_CODE = re.compile(r"[0-9]{1,18}")


def parse_code(term: str) -> int | None:
    """The code a term names, or None when it is a name."""
    term = term.strip()
    return int(term) if _CODE.fullmatch(term) else None


def code_for(kind: Kind, term: str) -> int:
    """What a user typed for --action or --record: a code as it is (an unknown one may be
    meant), or a name from the tables in use; raises LookupFailed with "did you mean"."""
    code = parse_code(term)
    if code is not None:
        return code
    return lookup_name(active(), term, kind)[0].code


def look_up(tables: Tables, term: str, kind: Kind | None = None) -> list[Code]:
    """The entries a code or a name stands for, in one table or (kind None) both."""
    code = parse_code(term)
    if code is not None:
        return lookup_code(tables, code, kind)
    return lookup_name(tables, term, kind)


def lookup_code(tables: Tables, code: int, kind: Kind | None = None) -> list[Code]:
    found = [e for k in _kinds(kind) if (e := tables.get(k, code)) is not None]
    if not found:
        raise LookupFailed(
            f"unknown {_field(kind)} {code}: not in Order Time's published lists "
            "(if you know its name, add it with --codes FILE)"
        )
    return found


def lookup_name(tables: Tables, name: str, kind: Kind | None = None) -> list[Code]:
    """Exact matches only (ignoring case, spaces, hyphens, underscores); a miss is an error
    that offers choices, because a guessed code would be silently wrong."""
    found = tables.named(name, kind)
    if found and len({e.kind for e in found}) == len(found):  # at most one per table
        return found
    shown = printable(name)
    if found:
        raise LookupFailed(f"{shown!r} is ambiguous: it could be {_choices(found)}")
    containing, spelt = tables.near(name, kind)
    if len(containing) > 1:
        raise LookupFailed(f"{shown!r} is ambiguous: it could be {_choices(containing)}")
    if containing or spelt:
        raise LookupFailed(
            f"no {_field(kind)} is called {shown!r}; did you mean {_choices(containing or spelt)}?"
        )
    raise LookupFailed(f"no {_field(kind)} is called {shown!r} (see 'ot-hook decode --list')")


def _kinds(kind: Kind | None) -> tuple[Kind, ...]:
    return KINDS if kind is None else (kind,)


def _field(kind: Kind | None) -> str:
    return " or ".join(FIELDS[k] for k in _kinds(kind))


def _choices(entries: list[Code], most: int = 8) -> str:
    names = [f"{printable(e.name)} ({e.kind} {e.code})" for e in entries[:most]]
    more = f" and {len(entries) - most} more" if len(entries) > most else ""
    return ", ".join(names) + more


def code_json(entry: Code) -> str:
    """One lookup result as a JSON line."""
    return json.dumps(
        {"kind": entry.kind, "code": entry.code, "name": entry.name, "source": str(entry.source)},
        ensure_ascii=False,
    )


# Streams of JSON values ----------------------------------------------------------------------


# (a JSON value, its own text when it sat alone on its line, the line where it starts).
# Plain tuples and classes here: generated ones (dataclass, NamedTuple) cost start-up time.
Parsed = tuple[Any, str | None, int]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_SPACE = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_UNQUOTED_KEY = re.compile(r"[A-Za-z_]\w*\s*:")
_FIRST_CHECK = 64 * 1024  # bytes of an unfinished value before we look for an early error


def iter_values(lines: Iterable[str], source: str) -> Iterator[Parsed]:
    """Each JSON value in JSON Lines text, or in JSON spread over lines (pretty-printed, an
    array, several objects one after another). Raises `BadInput` naming line and column."""
    buffer: list[str] = []
    start = depth = size = 0
    check_at = _FIRST_CHECK
    number = 0
    try:
        for number, line in enumerate(lines, 1):
            if not buffer:
                try:  # the fast path: one value per line
                    value = _DECODER.decode(line)
                except (ValueError, RecursionError):
                    if not line.strip():
                        continue
                    start, depth, size, check_at = number, 0, 0, _FIRST_CHECK
                else:
                    yield value, line, number
                    continue
            buffer.append(line)
            depth += _depth(line)
            size += len(line)
            if depth > 0 and size >= check_at:  # long and unfinished: is it already broken?
                check_at *= 2
                depth = 0 if _settled("".join(buffer)) else depth
            if depth <= 0:
                yield from _parse_chunk("".join(buffer), source, start)
                buffer.clear()
    except UnicodeDecodeError:
        # The text layer decodes ahead in blocks: the bad byte is here or further on.
        raise BadInput(
            f"{source}: the input is not UTF-8 text (line {number + 1} or later)"
        ) from None
    if buffer:
        yield from _parse_chunk("".join(buffer), source, start)


def _depth(line: str) -> int:
    """How many brackets this line leaves open, not counting those inside strings."""
    if '"' in line:
        line = _STRING.sub("", line)
    return line.count("{") + line.count("[") - line.count("}") - line.count("]")


def _settled(text: str) -> bool:
    """True when parsing `text` now gives an answer: a value, or an error before its end
    (not merely an unfinished value)."""
    try:
        _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        return exc.pos < len(text.rstrip())
    except (ValueError, RecursionError):
        return True
    return True  # complete after all (the bracket count was fooled)


def _parse_chunk(text: str, source: str, start: int) -> Iterator[Parsed]:
    """Every value in `text`, which begins on line `start` of `source`."""
    pos, end = 0, len(text)
    while (pos := _SPACE.match(text, pos).end()) < end:  # type: ignore[union-attr]
        line = start + text.count("\n", 0, pos)
        where = f"invalid JSON in {source} from line {line}"
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise BadInput(_json_error(exc, text, source, start)) from None
        except RecursionError:
            raise BadInput(f"{where}: nested too deeply") from None
        except ValueError as exc:  # NaN, or an integer too long for Python
            raise BadInput(f"{where}: {exc}") from None
        yield value, None, line


def _json_error(exc: json.JSONDecodeError, text: str, source: str, start: int) -> str:
    if exc.pos >= len(text.rstrip()):
        return f"invalid JSON in {source}: the input ends inside the value begun on line {start}"
    where = f"invalid JSON in {source} at line {start + exc.lineno - 1} column {exc.colno}"
    if _UNQUOTED_KEY.match(text, exc.pos):
        return (
            f"{where}: keys must be in double quotes. This looks like the sample on Order Time's "
            "help page, which is not strict JSON: quote every key (\"Id\": 1947) and add the "
            "comma it lacks after ActionType: 4. What Order Time sends is strict JSON."
        )
    # json says "Invalid control character at" and gives the place apart, as `where` does.
    return f"{where}: {exc.msg.removesuffix(' at')}"


# Events --------------------------------------------------------------------------------------


class Event:
    """An Audit Trail object with its names (None when unknown) and, when it sat alone on its
    line, its own JSON text."""

    __slots__ = ("action", "line", "obj", "record", "text")

    def __init__(self, obj: dict[str, Any], action: str | None, record: str | None,
                 text: str | None, line: int) -> None:
        self.obj, self.action, self.record, self.text, self.line = obj, action, record, text, line


class Decoder:
    """Adds names to Audit Trail objects. Unknown codes get None and one warning per code."""

    def __init__(self, tables: Tables, warn: Callable[[str], None]) -> None:
        self._tables = tables
        self._warn = warn
        self._warned: set[tuple[str, object]] = set()
        self._suffixes: dict[tuple[str | None, str | None], str] = {}

    def events(self, lines: Iterable[str], source: str) -> Iterator[Event]:
        for value, text, line in iter_values(lines, source):
            items = value if isinstance(value, list) else (value,)
            for index, item in enumerate(items, start=1):
                if not isinstance(item, dict):
                    where = f"item {index} of the array on line {line}" \
                        if isinstance(value, list) else f"line {line}"
                    raise BadInput(
                        f"{source} {where}: expected an Audit Trail object, "
                        f"got {json_type_name(item)}"
                    )
                action = self._name(item, "action", source, line)
                record = self._name(item, "record", source, line)
                own = None if isinstance(value, list) else text
                yield Event(item, action, record, own, line)

    def _name(self, obj: dict[str, Any], kind: Kind, source: str, line: int) -> str | None:
        field = FIELDS[kind]
        code = obj.get(field)
        if type(code) is int:  # not a bool, not a float
            entry = self._tables.get(kind, code)
            if entry is not None:
                return entry.name
            self._warn_once((field, code), f"{source} line {line}: unknown {field} {code}")
        elif field in obj:
            self._warn_once((field, "type"), f"{source} line {line}: {field} is not an integer")
        else:
            self._warn_once((field, "missing"), f"{source} line {line}: {field} is missing")
        return None

    def _warn_once(self, key: tuple[str, object], message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._warn(f"{message}; its name is null (not said again for later lines)")

    def json_line(self, event: Event, *, ascii_only: bool = False) -> str:
        """The event's own object with the two names added, as one JSON line. An object that
        sat alone on its line keeps its text byte for byte: only the names are appended."""
        obj, text = event.obj, event.text
        if (
            text is not None
            and obj
            and "ActionTypeName" not in obj
            and "RecordTypeName" not in obj
            and (not ascii_only or text.isascii())
        ):
            return text.strip()[:-1].rstrip() + self._suffix(event.action, event.record)
        named = {**obj, "ActionTypeName": event.action, "RecordTypeName": event.record}
        return json.dumps(named, ensure_ascii=ascii_only)

    def _suffix(self, action: str | None, record: str | None) -> str:
        suffix = self._suffixes.get((action, record))
        if suffix is None:
            action_json, record_json = json.dumps(action), json.dumps(record)
            suffix = f', "ActionTypeName": {action_json}, "RecordTypeName": {record_json}}}'
            self._suffixes[(action, record)] = suffix
        return suffix


# Output --------------------------------------------------------------------------------------


def write_json_lines(decoder: Decoder, events: Iterable[Event], stream: TextIO, *, live: bool,
                     ascii_only: bool = False, batch: int = 256) -> None:
    """Each event as a JSON line. A live source (a pipe: maybe `tail -f`) has each event
    flushed as it comes; otherwise lines go out in batches, which matters when stdout is
    unbuffered (PYTHONUNBUFFERED)."""
    pending: list[str] = []
    try:
        for event in events:
            pending.append(decoder.json_line(event, ascii_only=ascii_only))
            if live or len(pending) >= batch:
                stream.write("\n".join(pending) + "\n")
                stream.flush()
                pending.clear()
    finally:  # bad input later on: what was good before it still goes out, as when live
        if pending:
            stream.write("\n".join(pending) + "\n")
        stream.flush()


def print_codes(console: Console, entries: list[Code]) -> None:
    """Lookup results or the --list as a table, for a person."""
    from rich.table import Table
    from rich.text import Text

    table = Table("Kind", "Code", "Name", "Source")
    table.columns[1].justify = "right"
    for e in entries:
        style = "" if e.source is Source.DOCUMENTED else "yellow"
        table.add_row(
            FIELDS[e.kind], str(e.code), Text(printable(e.name)), Text(str(e.source), style=style)
        )
    console.print(table)


class EventRows:
    """Events as rows of one table that grows as they come: the header once, then a fixed-width
    row per event, so a live stream shows each event at once."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._started = False

    def print(self, event: Event) -> None:
        if not self._started:
            self.console.print(self._table(header=True))
            self._started = True
        table = self._table(header=False)
        obj = event.obj
        table.add_row(
            _cell(obj.get("Id")),
            _named(event.action, obj.get("ActionType")),
            _named(event.record, obj.get("RecordType")),
            _cell(obj.get("UniqueId")),
            _cell(obj.get("Description")),
            _cell(obj.get("Username")),
            _cell(_minutes(obj.get("ActionDate"))),
        )
        self.console.print(table)

    def _table(self, *, header: bool) -> Any:
        from rich.table import Table

        table = Table(box=None, show_header=header, header_style="bold", pad_edge=False,
                      expand=True)
        # Fixed widths (or shares of what is left) so that rows printed one by one line up.
        # Nothing is cut short: what is too long for its column goes on in the next line.
        wide = self.console.width >= WIDE_CONSOLE
        for title, narrow_size, wide_size in _EVENT_COLUMNS:
            width, ratio = wide_size if wide else narrow_size
            table.add_column(title, width=width, ratio=ratio, overflow="fold")
        return table


# Title, then width or share of what is left, on a narrow screen and on a wide one.
_EVENT_COLUMNS = (
    ("Id", (7, None), (10, None)),
    ("Action", (8, None), (13, None)),
    ("Record", (11, None), (18, None)),
    ("UniqueId", (8, None), (10, None)),
    ("Description", (None, 2), (None, 3)),
    ("User", (None, 1), (None, 1)),
    ("Date (UTC)", (10, None), (16, None)),
)
# From this many columns on, room for any 32-bit number, most record names, and the time.
WIDE_CONSOLE = 120


def _minutes(date: Any) -> Any:
    """2020-12-08T22:13:42.8181534Z as 2020-12-08 22:13, as the Audit Trail report shows it."""
    if isinstance(date, str) and len(date) >= 16 and date[10:11] == "T":
        return f"{date[:10]} {date[11:16]}"
    return date


def _cell(value: Any) -> Any:
    from rich.text import Text

    if value is None:
        return Text("")
    return Text(printable(value if isinstance(value, str) else json.dumps(value)))


def _named(name: str | None, code: Any) -> Any:
    from rich.text import Text

    shown = printable(json.dumps(code)) if code is not None else "missing"
    if name is None:
        return Text(f"? ({shown})", style="bold red")
    return Text(printable(name))
