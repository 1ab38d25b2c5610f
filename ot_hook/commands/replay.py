"""`ot-hook replay`: send stored deliveries again, byte for byte.

Selection as in `tail` (plus store rows), sending and reporting as in `send-sample`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ot_hook.cliutil import (
    ACTION_NAMES,
    MAX_CONCURRENCY,
    OUTCOMES,
    RECORD_NAMES,
    HomeOption,
    InsecureOption,
    PasswordFileOption,
    PasswordOption,
    RetriesOption,
    SendJsonOption,
    TimeoutOption,
    UserOption,
    discard_stdout,
    fail,
    one_of,
    resolve_home,
)
from ot_hook.exitcodes import ExitCode
from ot_hook.store import StoreError
from ot_hook.terminal import Terminal
from ot_hook.textsafe import printable

if TYPE_CHECKING:
    from ot_hook.sender import Result, Target
    from ot_hook.store import StoredDelivery

EPILOG = """Examples:

  ot-hook replay --since 1h --dry-run          (what would go, and where)

  ot-hook replay --unique-id 1877 --to http://localhost:3000/hook

  ot-hook replay --relay failed               (what your app missed)
"""


def replay(
    ctx: typer.Context,
    to: Annotated[
        str | None,
        typer.Option(help="Where to send. Default: the running receiver's --forward-to "
                     "target, else the receiver itself; with --relay and serve stopped, the "
                     "target the relays were made for.", show_default=False),
    ] = None,
    row: Annotated[
        list[int] | None, typer.Option("--row", help="A store row, as tail shows it "
                                       "(repeatable).")
    ] = None,
    event_id: Annotated[
        list[int] | None, typer.Option("--id", help="The event's Id (repeatable).")
    ] = None,
    unique_id: Annotated[
        list[str] | None, typer.Option(help="The event's UniqueId (repeatable).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="A duration back from now (10m, 2h, 7d) or a time.")
    ] = None,
    action: Annotated[
        list[str] | None, typer.Option(help="ActionType code or name (repeatable).",
                                       autocompletion=ACTION_NAMES)
    ] = None,
    record: Annotated[
        list[str] | None, typer.Option(help="RecordType code or name (repeatable).",
                                       autocompletion=RECORD_NAMES)
    ] = None,
    status: Annotated[
        list[str] | None, typer.Option(help="accepted, duplicate or rejected (repeatable). "
                                       "Without it, other filters leave rejected ones out.",
                                       autocompletion=OUTCOMES)
    ] = None,
    relay: Annotated[
        list[str] | None,
        typer.Option(help="Deliveries whose serve --forward-to relay is pending, delivered or "
                     "failed (repeatable): --relay failed resends what your app missed.",
                     autocompletion=one_of("pending", "delivered", "failed")),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every stored delivery.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be sent, and where; send nothing.")
    ] = False,
    home: HomeOption = None,
    user: UserOption = None,
    password: PasswordOption = None,
    password_file: PasswordFileOption = None,
    cacert: Annotated[
        Path | None, typer.Option(help="Trust this CA (PEM) for an https:// target.",
                                  dir_okay=False)
    ] = None,
    insecure: InsecureOption = False,
    allow_http: Annotated[
        bool, typer.Option("--allow-http", help="Send Basic Auth over plain http:// to another "
                           "machine (to this one it goes without asking).")
    ] = False,
    concurrency: Annotated[
        int, typer.Option(min=1, max=MAX_CONCURRENCY,
                          help="Deliveries in flight at once; 1 keeps the stored order.")
    ] = 1,
    timeout: TimeoutOption = 10.0,
    retries: RetriesOption = 0,
    json_output: SendJsonOption = False,
) -> None:
    """Send stored deliveries again, byte for byte, with their original Content-Type."""
    from dataclasses import replace

    from ot_hook import home as home_files
    from ot_hook import replay as replaying
    from ot_hook import tail

    state = resolve_home(home)
    try:
        filters = tail.resolve_filters(
            actions=action or (), records=record or (), ids=event_id or (),
            unique_ids=unique_id or (), outcomes=status or (), since=since,
        )
    except tail.FilterError as exc:
        fail(str(exc), ExitCode.USAGE)
    states = tuple(dict.fromkeys(state.strip().lower() for state in relay or ()))
    unknown = [state for state in states if state not in replaying.RELAY_STATES]
    if unknown:
        fail(f"--relay {unknown[0]!r}: choose pending, delivered or failed", ExitCode.USAGE)
    if everything and (row or states or filters != tail.Filters()):
        fail("--all replays every delivery: it does not go with other selectors",
             ExitCode.USAGE)
    # A rejected delivery was never relayed either: a filter leaves it out unless --status
    # names it (a --row, or --all, takes whatever it names).
    leave_out_rejected = not (row or everything or filters.outcomes) and filters != tail.Filters()
    if leave_out_rejected:
        filters = replace(filters, outcomes=("accepted", "duplicate"))
    selection = replaying.Selection(filters, tuple(row or ()), everything, states)
    info = home_files.read_serve_info(state)
    from_store = states and to is None and (info is None or info.forward_to is None)
    if from_store:
        to = _stored_relay_target(state, states)
    if to is not None and not to.strip():  # an unset variable: never the default unseen
        fail("--to is empty: give your app's URL, or leave it out", ExitCode.USAGE)
    destination = to or replaying.default_target(state) or "https://127.0.0.1:8443/"
    from ot_hook import sender

    try:
        sender.check_url(destination, allow_http=True)  # also before --dry-run names it
    except sender.SendError as exc:
        fail(str(exc), exc.code)
    try:
        chosen = list(replaying.selected(state / home_files.STORE, selection))
    except replaying.ReplayError as exc:
        fail(str(exc), ExitCode.USAGE if selection.is_empty() else ExitCode.ERROR)
    terminal = Terminal()
    if leave_out_rejected:
        rejected = replace(selection, filters=replace(filters, outcomes=("rejected",)))
        try:
            left_out = replaying.count(state / home_files.STORE, rejected)
        except replaying.ReplayError as exc:
            fail(str(exc), ExitCode.ERROR)
        if left_out:
            terminal.status(f"left out {left_out} rejected (--status rejected sends them)")
    if from_store:
        terminal.status(f"to {printable(destination)}: the --forward-to target of these relays")
    if dry_run:
        _list(chosen, destination, terminal, json_output)
        return
    if not chosen:
        terminal.status("nothing matches: no delivery sent")
        return
    # Credentials from the environment are the receiver's (README): they go to the receiver,
    # never to the user's app; the app's are given as flags.
    flags = {name for name in ("user", "password", "password_file")
             if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}
    target = _target(destination, state, user, password, password_file, cacert, insecure,
                     allow_http, bool(flags), terminal)
    if insecure:
        terminal.status("ot-hook: warning: --insecure: the certificate is not verified")
    from ot_hook.commands.send import send_and_report
    from ot_hook.sender import SendOptions

    options = SendOptions(concurrency, None, timeout, retries, command="replay")
    outgoing = (replaying.outgoing(delivery) for delivery in chosen)
    delivered: dict[int, int] = {}  # store row -> status, of each 2xx

    def note(result: Result) -> None:
        if result.ok and result.status is not None:
            delivered[chosen[result.index].row] = result.status

    code = send_and_report(target, options, outgoing, len(chosen), terminal, json_output,
                           after=note)
    # Only relays whose target is this destination change: a replay elsewhere leaves them.
    try:
        changed = replaying.mark_relayed(state / home_files.STORE, delivered, destination)
    except StoreError as exc:  # what was sent is sent: keep the send's exit code
        terminal.status(f"ot-hook: warning: sent, but not marked as relayed: {exc}")
        changed = 0
    if changed:
        terminal.status(f"marked {changed} relays to {destination} as delivered")
    raise typer.Exit(int(code))


def _stored_relay_target(state: Path, states: tuple[str, ...]) -> str:
    """With no receiver running, --relay sends to the --forward-to target that its relays
    were made for, when they agree on one."""
    from ot_hook import home as home_files
    from ot_hook import replay as replaying

    try:
        targets = replaying.relay_targets(state / home_files.STORE, states)
        others = [] if targets else replaying.relay_targets(state / home_files.STORE,
                                                            replaying.RELAY_STATES)
    except replaying.ReplayError as exc:
        fail(str(exc), ExitCode.ERROR)
    if len(targets) == 1:
        return str(targets[0])
    if not targets and others:  # relays there are, none in these states: nothing to send
        Terminal().status(f"nothing matches: no relay is {' or '.join(states)}")
        raise typer.Exit(int(ExitCode.OK))
    if not targets:
        fail(f"--relay: the store of {state} holds no relays, and no receiver with "
             "--forward-to runs there; say where with --to URL", ExitCode.USAGE)
    listed = ", ".join(printable(target) for target in targets[:3])
    fail(f"--relay picks deliveries for more than one --forward-to target ({listed}"
         f"{', ...' if len(targets) > 3 else ''}): say which with --to URL", ExitCode.USAGE)


def _list(
    chosen: list[StoredDelivery], destination: str, terminal: Terminal, json_output: bool
) -> None:
    noun = "delivery" if len(chosen) == 1 else "deliveries"
    terminal.status(f"would send {len(chosen)} {noun} to {destination}")
    try:
        _print_all(chosen, terminal, json_output)
    except BrokenPipeError:  # `| head`
        discard_stdout()


def _print_all(chosen: list[StoredDelivery], terminal: Terminal, json_output: bool) -> None:
    from ot_hook import render

    if terminal.pretty and not json_output:
        console = terminal.console()
        for delivery in chosen:
            console.print(render.line(delivery))
        return
    for delivery in chosen:
        terminal.stdout.write(render.json_line(delivery) + "\n")
    terminal.stdout.flush()


def _target(
    url: str, state: Path, user: str | None, password: str | None, password_file: Path | None,
    cacert: Path | None, insecure: bool, allow_http: bool, explicit: bool, terminal: Terminal,
) -> Target:
    from dataclasses import replace
    from urllib.parse import urlsplit

    from ot_hook import credentials, home, sender

    info = home.read_serve_info(state)
    to_our_receiver = info is not None and url == info.url
    if not (to_our_receiver or explicit) and (user is not None or password is not None):
        terminal.status(f"OT_HOOK_USER and OT_HOOK_PASSWORD are the receiver's: not sent to "
                        f"{printable(url)} (give your app's with --user and --password-file)")
    try:  # allow_http: the user's app often listens on plain HTTP
        if to_our_receiver or explicit:
            parts = urlsplit(url)
            if (parts.scheme.lower() == "http" and not allow_http
                    and not sender.is_loopback(parts.hostname or "")):
                fail(f"replay would send the password in the clear to {parts.hostname} "
                     "(http://): use https://, leave the credentials out, or pass "
                     "--allow-http", ExitCode.USAGE)
            creds = credentials.for_sender(user, password, password_file, state)
            return sender.target(url, creds.user, creds.password, state=state, cacert=cacert,
                                 insecure=insecure, allow_http=True)
        anonymous = sender.target(url, "", "", state=state, cacert=cacert, insecure=insecure,
                                  allow_http=True)
        return replace(anonymous, authorization=None)  # the user's app may want none
    except credentials.CredentialsError as exc:
        fail(str(exc), ExitCode.USAGE if exc.usage else ExitCode.ERROR)
    except sender.SendError as exc:
        fail(str(exc), exc.code)
