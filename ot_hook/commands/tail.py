"""`ot-hook tail`: the last deliveries, then new ones as they arrive."""

from __future__ import annotations

from typing import Annotated

import typer

from ot_hook.cliutil import (
    ACTION_NAMES,
    OUTCOMES,
    RECORD_NAMES,
    HomeOption,
    discard_stdout,
    fail,
    reader_gone,
    resolve_home,
)
from ot_hook.exitcodes import ExitCode

EPILOG = """Examples:

  ot-hook tail                                  (the last 10, then follow)

  ot-hook tail --action "change status" --record "sales order" --since 1h

  ot-hook tail -n 0 --json --no-relays | jq .event    (an object per delivery)
"""


def tail(
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=0, max=2**62,
                          help="How many stored deliveries to show first.")
    ] = 10,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep showing new deliveries as they "
                           "arrive, across receiver restarts.")
    ] = True,
    relays: Annotated[
        bool, typer.Option("--relays/--no-relays", help="While following, also show each "
                           "attempt of 'serve --forward-to' to relay a shown delivery. In JSON: "
                           "relay_of (the delivery's row), attempt, attempted_at, status (null "
                           "when no answer came), millis, error, state (pending, delivered or "
                           "failed).")
    ] = True,
    json_lines: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (also whenever stdout is "
                           "not a terminal).")
    ] = False,
    utc: Annotated[bool, typer.Option("--utc", help="Show times in UTC, not local time.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v",
                           help="Add the headers and the body (to JSON lines: the headers).")
    ] = False,
    action: Annotated[
        list[str] | None,
        typer.Option("--action", help="ActionType code or name, e.g. 4 or 'change status' "
                     "(repeatable).", show_default=False, autocompletion=ACTION_NAMES),
    ] = None,
    record: Annotated[
        list[str] | None,
        typer.Option("--record", help="RecordType code or name, e.g. 7 or 'sales order' "
                     "(repeatable).", show_default=False, autocompletion=RECORD_NAMES),
    ] = None,
    event_id: Annotated[
        list[int] | None,
        typer.Option("--id", help="The event's Id (repeatable).", show_default=False),
    ] = None,
    unique_id: Annotated[
        list[str] | None,
        typer.Option("--unique-id", help="The event's UniqueId, e.g. a document number "
                     "(repeatable).", show_default=False),
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", help="accepted, duplicate or rejected (repeatable).",
                     show_default=False, autocompletion=OUTCOMES),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="A duration back from now (10m, 2h, 7d) or a time "
                     "(2024-01-03T10:17; local unless it has an offset).", show_default=False),
    ] = None,
    grep: Annotated[
        str | None,
        typer.Option("--grep", help="Text in the description, user, UniqueId, reason or body "
                     "(ASCII letters match in any case).", show_default=False),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Show the last stored deliveries, decoded, then follow new ones live, and how each was
    relayed by 'serve --forward-to'."""
    from ot_hook import home as state
    from ot_hook import store
    from ot_hook import tail as tailing
    from ot_hook.terminal import Terminal

    try:
        filters = tailing.resolve_filters(
            actions=action or (), records=record or (), ids=event_id or (),
            unique_ids=unique_id or (), outcomes=status or (), since=since, grep=grep,
        )
    except tailing.FilterError as exc:
        fail(str(exc), ExitCode.USAGE)
    spec = tailing.Follow(resolve_home(home) / state.STORE, filters, last=lines, follow=follow,
                          relays=relays)
    look = tailing.Look(json_lines=json_lines, verbose=verbose, utc=utc)
    try:
        terminal = Terminal()
        tailing.run(spec, terminal, look, stop=lambda: reader_gone(terminal.stdout))
    except KeyboardInterrupt:
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except BrokenPipeError:  # `| head` has what it wanted
        discard_stdout()
    except (tailing.NoStore, store.StoreError) as exc:
        fail(str(exc))
