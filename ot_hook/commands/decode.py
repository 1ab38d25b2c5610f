"""`ot-hook decode`: codes to names and back, and whole Audit Trail objects decoded."""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from ot_hook.cliutil import ACTION_NAMES, RECORD_NAMES, discard_stdout, error, fail
from ot_hook.exitcodes import ExitCode

if TYPE_CHECKING:  # the library is imported when the command runs, not when the CLI starts
    from ot_hook.codes import Code, Kind, Tables
    from ot_hook.terminal import Terminal

EPILOG = """Examples:

  ot-hook decode 4 7                            (Change Status, Sales Order)

  ot-hook decode --record "ship doc line item"  (a name back to its code: 1070)

  ot-hook decode - < events.jsonl | jq .RecordTypeName  (names added)
"""


def _complete_terms(ctx: typer.Context, incomplete: str) -> list[str]:
    """After --list, the two tables; else the names of both (codes need no completing)."""
    if ctx.params.get("list_codes"):
        from ot_hook.decode import TABLE_WORDS

        return [word for word in TABLE_WORDS if word.startswith(incomplete.lower())]
    return ACTION_NAMES(incomplete) + RECORD_NAMES(incomplete)


def decode(
    terms: Annotated[
        list[str] | None,
        typer.Argument(
            help="Codes or names (two mean an ActionType then a RecordType; one is looked up in "
            "both tables), Audit Trail JSON, or - to read JSON or JSON Lines from stdin. "
            "With --list: actions or records.",
            show_default=False,
            autocompletion=_complete_terms,
        ),
    ] = None,
    action: Annotated[
        str | None, typer.Option("--action", "-a", help="Look up one ActionType, by code or name.",
                                 autocompletion=ACTION_NAMES)
    ] = None,
    record: Annotated[
        str | None, typer.Option("--record", "-r", help="Look up one RecordType, by code or name.",
                                 autocompletion=RECORD_NAMES)
    ] = None,
    file: Annotated[
        list[Path] | None,
        typer.Option("--file", "-f", exists=True, dir_okay=False,
                     help="Decode the Audit Trail objects in this file (JSON or JSON Lines).",
                     show_default=False),
    ] = None,
    list_codes: Annotated[
        bool, typer.Option("--list", help="List every known code (add: actions or records).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines, even on a terminal.")
    ] = False,
    codes: Annotated[
        Path | None,
        typer.Option("--codes", envvar="OT_HOOK_CODES", exists=True, dir_okay=False,
                     show_envvar=True,
                     help="A TOML file of your own codes: [actions] 5 = \"Login\", [records] ..."),
    ] = None,
) -> None:
    """Turn ActionType and RecordType codes into names and back, or decode Audit Trail objects."""
    from ot_hook import decode as lib
    from ot_hook.terminal import Terminal

    terms = terms or []
    terminal = Terminal()
    on_screen = bool(terminal.stdout_isatty)
    if as_json:
        terminal.stdout_isatty = False
    try:
        tables = lib.load_tables(codes)
        with _quiet_on_closed_pipe(terminal.stdout):
            if list_codes:
                _list(terminal, tables, terms, action or record or ("--file" if file else None))
            elif file or "-" in terms or any(_is_json(t) for t in terms):
                _events(terminal, tables, terms, file or [], action or record, on_screen)
            else:
                _lookups(terminal, tables, terms, action, record)
    except lib.BadInput as exc:
        fail(str(exc), ExitCode.BAD_INPUT)


def _list(terminal: Terminal, tables: Tables, terms: list[str], other: str | None) -> None:
    from ot_hook.decode import TABLE_WORDS

    if other or len(terms) > 1 or (terms and terms[0] not in TABLE_WORDS):
        fail("--list takes nothing else, or one of: actions, records", ExitCode.USAGE)
    _print_codes(terminal, tables.entries(TABLE_WORDS[terms[0]] if terms else None))


def _lookups(
    terminal: Terminal, tables: Tables, terms: list[str], action: str | None, record: str | None
) -> None:
    from ot_hook import decode as lib

    if not terms and action is None and record is None:
        fail("give codes or names, JSON, - for stdin, --file or --list (see 'ot-hook decode "
             "--help')", ExitCode.USAGE)
    if len(terms) > 2:
        fail(f"at most two codes or names (an ActionType and a RecordType), got {len(terms)}",
             ExitCode.USAGE)
    wanted: list[tuple[str, Kind | None]] = [(terms[0], None)] if len(terms) == 1 else []
    if len(terms) == 2:
        wanted += [(terms[0], "action"), (terms[1], "record")]
    if action is not None:
        wanted.append((action, "action"))
    if record is not None:
        wanted.append((record, "record"))
    found: list[Code] = []
    failed = False
    for term, kind in wanted:
        try:
            found += lib.look_up(tables, term, kind)
        except lib.LookupFailed as exc:
            error(str(exc))
            failed = True
    _print_codes(terminal, found)
    if failed:
        raise typer.Exit(int(ExitCode.ERROR))


def _print_codes(terminal: Terminal, entries: list[Code]) -> None:
    from ot_hook import decode as lib

    if not entries:
        return
    if terminal.pretty:
        lib.print_codes(terminal.console(), entries)
    else:
        terminal.stdout.write("".join(lib.code_json(e) + "\n" for e in entries))
        terminal.stdout.flush()


def _events(
    terminal: Terminal, tables: Tables, terms: list[str], files: list[Path], other: str | None,
    on_screen: bool,
) -> None:
    from ot_hook import decode as lib

    lookups = [t for t in terms if t != "-" and not _is_json(t)]
    if other or lookups:
        fail("decode either codes and names or Audit Trail JSON, not both in one run",
             ExitCode.USAGE)
    if terms.count("-") > 1:
        fail("stdin (-) can be read only once", ExitCode.USAGE)
    decoder = lib.Decoder(tables, lambda message: terminal.status(f"ot-hook: warning: {message}"))
    named_files = {str(path) for path in files}
    rows = lib.EventRows(terminal.console()) if terminal.pretty else None
    for source, lines, live in _sources(terms, files):
        events = decoder.events(lines, source)
        if source in named_files:  # the README's exit code 7: "an empty --file"
            events = _not_empty(events, source)
        if rows is not None:
            for event in events:
                rows.print(event)
        else:
            lib.write_json_lines(decoder, events, terminal.stdout, live=live,
                                 ascii_only=on_screen)


def _not_empty(events: Iterator[Any], source: str) -> Iterator[Any]:
    """`events`, or BadInput when a --file holds none: an empty export is a mistake to say."""
    from ot_hook import decode as lib

    found = False
    for event in events:
        found = True
        yield event
    if not found:
        raise lib.BadInput(f"{source} holds no Audit Trail object")


def _sources(terms: list[str], files: list[Path]) -> Iterator[tuple[str, TextIO, bool]]:
    """(name, its lines, whether more may come later) for each input, in order."""
    arguments = sum(_is_json(t) for t in terms)
    position = 0
    for term in terms:
        if term == "-":
            if isinstance(sys.stdin, io.TextIOWrapper):  # strict UTF-8, a BOM allowed
                sys.stdin.reconfigure(encoding="utf-8-sig", errors="strict")
            yield "<stdin>", sys.stdin, not _is_regular(sys.stdin)
        else:
            position += 1
            name = "<argument>" if arguments == 1 else f"<argument {position}>"
            yield name, io.StringIO(term), False
    for path in files:
        try:
            handle = path.open(encoding="utf-8-sig")
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror or exc}", ExitCode.ERROR)
        with handle:
            yield str(path), handle, not _is_regular(handle)


def _is_json(term: str) -> bool:
    return term.lstrip()[:1] in ("{", "[")


def _is_regular(stream: TextIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


@contextmanager
def _quiet_on_closed_pipe(stdout: TextIO) -> Iterator[None]:
    """`ot-hook decode - | head` ends quietly when head has read enough."""
    try:
        yield
    except BrokenPipeError:
        discard_stdout()
        raise typer.Exit(int(ExitCode.OK)) from None
