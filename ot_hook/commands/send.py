"""`ot-hook send-sample`: POST realistic Audit Trail deliveries to a receiver over HTTPS.

Thin over ot_hook.sender (the sending) and ot_hook.samples (what is sent). aiohttp and rich
are imported inside functions, so `ot-hook --help` does not load them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ot_hook import codes
from ot_hook.cliutil import (
    ACTION_NAMES,
    MAX_CONCURRENCY,
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
    resolve_home,
)
from ot_hook.exitcodes import ExitCode
from ot_hook.terminal import Terminal
from ot_hook.textsafe import printable

if TYPE_CHECKING:
    import asyncio

    from ot_hook.sender import Outgoing, Result, SendOptions, Summary, Target

T = TypeVar("T")
LINE_LIMIT = 50  # up to this many deliveries get a line each on a terminal; more get a bar

EPILOG = """Examples:

  ot-hook send-sample --scenario day    (to the receiver of this --home)

  ot-hook send-sample --record 'Purchase Order' --id 7001 --count 2

  ot-hook send-sample https://example.com/ot --cacert ca.pem -f events.jsonl
"""


def _complete_scenario(incomplete: str) -> list[str]:
    from ot_hook import samples

    return [name for name in (*samples.SCENARIOS, "list") if name.startswith(incomplete)]

def send_sample(
    url: Annotated[
        str | None,
        typer.Argument(help="Where to POST. Default: the receiver running on --home "
                       "(its serve.json), else https://127.0.0.1:8443/.", show_default=False),
    ] = None,
    home: HomeOption = None,
    user: UserOption = None,
    password: PasswordOption = None,
    password_file: PasswordFileOption = None,
    cacert: Annotated[
        Path | None,
        typer.Option(help="Trust this CA (PEM). Default: the local CA of --home for loopback "
                     "URLs, the system's CAs for others.", dir_okay=False),
    ] = None,
    insecure: InsecureOption = False,
    allow_http: Annotated[
        bool, typer.Option("--allow-http", help="Allow an http:// URL (Order Time sends "
                           "only HTTPS).")
    ] = False,
    action: Annotated[
        str | None, typer.Option(help="ActionType, a code or a name: 4, 'Change Status'.",
                                 autocompletion=ACTION_NAMES)
    ] = None,
    record: Annotated[
        str | None, typer.Option(help="RecordType, a code or a name: 7, 'Sales Order'.",
                                 autocompletion=RECORD_NAMES)
    ] = None,
    event_id: Annotated[
        int | None, typer.Option("--id", help="Give every event this Id (to test duplicates). "
                                 "Default: rising Ids that no earlier run used.")
    ] = None,
    unique_id: Annotated[
        str | None, typer.Option(help="UniqueId: a document number, or an item name.")
    ] = None,
    description: Annotated[str | None, typer.Option(help="Description.")] = None,
    username: Annotated[str | None, typer.Option(help="Username.")] = None,
    date: Annotated[
        str | None, typer.Option(help="ActionDate, e.g. 2022-01-03T10:26:12.2178450Z.")
    ] = None,
    scenario: Annotated[
        str | None, typer.Option(help="Send a scenario's events in order ('list' lists them). "
                                 "--action, --record, --id and the other field options "
                                 "replace that field in every one of its events.",
                                 autocompletion=_complete_scenario)
    ] = None,
    file: Annotated[
        str | None,
        typer.Option("--file", "-f", help="Send the JSON object, JSON array or JSON Lines in "
                     "this file ('-' for stdin), byte for byte.", show_default=False),
    ] = None,
    count: Annotated[
        int | None, typer.Option(min=1, help="How many events. Default 1; a scenario's own "
                                 "length, repeated day after day when larger.")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=MAX_CONCURRENCY,
                                             help="Deliveries in flight at once.")] = 1,
    rate: Annotated[
        float | None, typer.Option(min=0.001, help="At most this many deliveries per second.")
    ] = None,
    timeout: TimeoutOption = 10.0,
    retries: RetriesOption = 0,
    json_output: SendJsonOption = False,
) -> None:
    """Send realistic Audit Trail deliveries over HTTPS with Basic Auth, and report each answer.

    Exit 0 when every delivery got a 2xx; else 3 connection failed, 4 credentials refused,
    5 timed out, 6 an HTTP error; 2 a bad option, 7 a bad --file, 130 interrupted.
    """
    from ot_hook import samples

    if scenario == "list":
        for name, (about, rows) in samples.SCENARIOS.items():
            print(f"{name}\t{len(rows)} events\t{about}")
        return
    if scenario is not None and scenario not in samples.SCENARIOS:
        fail(f"no scenario {scenario!r}; choose from: {', '.join(samples.SCENARIOS)}",
             ExitCode.USAGE)
    generating = {"--action": action, "--record": record, "--id": event_id,
                  "--unique-id": unique_id, "--description": description,
                  "--username": username, "--date": date, "--scenario": scenario,
                  "--count": count}
    if file is not None:
        given = [flag for flag, value in generating.items() if value is not None]
        if given:
            fail(f"--file sends events as they are; it does not go with {', '.join(given)}",
                 ExitCode.USAGE)
        deliveries, total = _from_file(file)
    else:
        deliveries, total = _generated(action, record, event_id, unique_id, description,
                                       username, date, scenario, count)
    state = resolve_home(home)
    chosen = _target(url, state, user, password, password_file, cacert, insecure, allow_http)
    if insecure:
        print("ot-hook: warning: --insecure: the certificate is not verified, so anyone in "
              "between can read the password and the events", file=sys.stderr, flush=True)
    from ot_hook.sender import SendOptions

    options = SendOptions(concurrency, rate, timeout, retries)
    raise typer.Exit(int(send_and_report(chosen, options, deliveries, total, Terminal(),
                                         json_output)))


def _generated(
    action: str | None, record: str | None, event_id: int | None, unique_id: str | None,
    description: str | None, username: str | None, date: str | None, scenario: str | None,
    count: int | None,
) -> tuple[Iterator[Outgoing], int]:
    from ot_hook import samples
    from ot_hook.events import parse_action_date
    from ot_hook.sender import Outgoing

    overrides: dict[str, Any] = {}
    if action is not None:
        overrides["ActionType"] = _code("action", action)
    if record is not None:
        overrides["RecordType"] = _code("record", record)
    if unique_id is not None:
        overrides["UniqueId"] = int(unique_id) if unique_id.isdigit() else unique_id
    if date is not None and parse_action_date(date) is None:
        fail(f"--date {date!r} is not an ISO 8601 UTC date like 2022-01-03T10:26:12.2178450Z",
             ExitCode.USAGE)
    for field, value in (("Description", description), ("Username", username),
                         ("ActionDate", date)):
        if value is not None:
            overrides[field] = value
    now = datetime.now(UTC)
    events = samples.generate(count, samples.clock_id(now), scenario=scenario,
                              fixed_id=event_id, overrides=overrides, now=now)
    total = count or (samples.scenario_size(scenario) if scenario else 1)
    return (Outgoing.of(samples.body(e), e) for e in events), total


def _code(kind: codes.Kind, term: str) -> int:
    """A code as it is (an unknown one may be sent on purpose), or a name from the tables."""
    from ot_hook import decode

    try:
        return decode.code_for(kind, term)
    except decode.LookupFailed as exc:
        fail(f"--{kind}: {exc}", ExitCode.USAGE)


def _from_file(name: str) -> tuple[Iterator[Outgoing], int]:
    from ot_hook import samples
    from ot_hook.sender import Outgoing

    try:
        data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        fail(f"cannot read --file {name}: {exc.strerror or exc}", ExitCode.USAGE)
    try:
        bodies = samples.split_bodies(data)
    except samples.BadInput as exc:
        fail(f"--file {'stdin' if name == '-' else name}: {exc}", ExitCode.BAD_INPUT)
    return (Outgoing.of(body) for body in bodies), len(bodies)


def _target(
    url: str | None, state: Path, user: str | None, password: str | None,
    password_file: Path | None, cacert: Path | None, insecure: bool, allow_http: bool,
) -> Target:
    from ot_hook import credentials, sender
    from ot_hook import home as home_files

    if url is None and home_files.read_serve_info(state) is None:
        gone = home_files.stopped_serve_info(state)
        if gone is not None:  # else the user wonders why the port is not the one serve had
            Terminal().status(f"the receiver at {printable(gone.url)} (pid {gone.pid}) has "
                              f"stopped; trying {sender.DEFAULT_URL}")
    try:
        chosen_url = sender.check_url(url if url is not None else sender.default_url(state),
                                      allow_http=allow_http)
        creds = credentials.for_sender(user, password, password_file, state, chosen_url)
        return sender.target(chosen_url, creds.user, creds.password, state=state,
                             cacert=cacert, insecure=insecure, allow_http=allow_http)
    except credentials.CredentialsError as exc:
        fail(str(exc), ExitCode.USAGE if exc.usage else ExitCode.ERROR)
    except sender.SendError as exc:
        fail(str(exc), exc.code)


def send_and_report(
    target: Target, options: SendOptions, deliveries: Iterator[Outgoing], total: int,
    terminal: Terminal, json_output: bool, after: Callable[[Result], None] | None = None,
) -> ExitCode:
    """Send, report each result (and hand it to `after`), then the summary; the exit code."""
    import asyncio
    import time

    from ot_hook.sender import Sender, SendError, Summary

    report = Report(terminal, total, json_output)

    def on_result(result: Result) -> None:
        report.result(result)
        if after is not None:
            after(result)

    sender = Sender(target, options, on_result, on_wait=terminal.status)
    started = time.perf_counter()
    try:
        with report, _event_loop() as runner:
            summary = runner.run(_until_killed(sender.run(deliveries)))
    except SendError as exc:
        fail(str(exc), exc.code)
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or a kill (SIGTERM)
        report.summary(Summary.of(sender.results, time.perf_counter() - started))
        fail(f"interrupted after {report.done} of {total} deliveries", ExitCode.INTERRUPTED)
    except BrokenPipeError:  # `| head`: the reader has what it wanted; stop quietly
        discard_stdout()
        return ExitCode.OK
    report.summary(summary)
    return summary.exit_code


async def _until_killed(work: Coroutine[Any, Any, T]) -> T:
    """`work`, cancelled by SIGTERM or SIGHUP as Ctrl-C cancels it, so that these also end
    with the summary. (Not by turning them into SIGINT: a script's background job ignores it.)"""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    taken: list[int] = []
    for name in ("SIGTERM", "SIGHUP"):  # a kill, a closed terminal
        number = getattr(signal, name, None)
        if number is None or signal.getsignal(number) is signal.SIG_IGN:  # nohup: left alone
            continue
        try:
            loop.add_signal_handler(number, task.cancel)
        except (NotImplementedError, RuntimeError, ValueError):  # Windows; not the main thread
            continue
        taken.append(number)
    try:
        return await work
    finally:
        for number in taken:
            loop.remove_signal_handler(number)


def _event_loop() -> asyncio.Runner:
    """uvloop where it is installed: it makes the sender noticeably faster."""
    import asyncio  # here, not at the top: every command's start would pay for it

    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


class Report:
    """A line per delivery (or a progress bar) on a terminal; JSON lines otherwise."""

    def __init__(self, terminal: Terminal, total: int, json_output: bool) -> None:
        self.terminal = terminal
        self.total = total
        self.pretty = terminal.pretty and not json_output
        self.bar = self.pretty and total > LINE_LIMIT
        self.done = 0
        self.console = terminal.console() if self.pretty else None
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Report:
        if self.bar:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._progress = Progress("sending", BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self.console)
            self._task = self._progress.add_task("send", total=self.total)
            self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def result(self, result: Result) -> None:
        self.done += 1
        if self.console is None:
            self.terminal.stdout.write(json.dumps(result.as_json()) + "\n")
            self.terminal.stdout.flush()
        elif self._progress is not None:
            self._progress.advance(self._task)
        else:
            self.console.print(describe(result), style="green" if result.ok else "red")

    def summary(self, summary: Summary) -> None:
        # A failure's line quotes the server's answer: shown escaped, as in describe().
        lines = [printable(line) for line in summary.lines()]
        if self.console is None:
            for line in lines:
                self.terminal.status(line)
            return
        for line in lines:
            self.console.print(line, style="bold" if line.startswith("sent") else None)


def describe(result: Result) -> str:
    """status  Id  Action Record UniqueId  ms  (and what went wrong), for a terminal line."""
    d = result.delivery

    def name(code: int | None, lookup: Any, label: str) -> str:
        if code is None:
            return "?"
        return str(lookup(code) or f"{label} {code}")

    parts = [
        f"{result.label:>3}",
        f"Id {d.event_id if d.event_id is not None else '?'}",
        f"{name(d.action_type, codes.action_name, 'ActionType')} "
        f"{name(d.record_type, codes.record_name, 'RecordType')} "
        f"{d.unique_id if d.unique_id is not None else ''}".rstrip(),
        f"{result.millis:.0f} ms",
    ]
    if not result.ok:
        parts.append(result.message)
    return printable("  ".join(parts))
