"""`ot-hook send-sample` and ot_hook.sender: real TLS to the real receiver (and to small aiohttp
apps that fail on purpose) on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from ot_hook import certs, home, samples, sender
from ot_hook.cli import main
from ot_hook.commands.send import Report
from ot_hook.exitcodes import ExitCode
from ot_hook.serve import Receiver
from ot_hook.terminal import Terminal
from tests.streaming import HUGE, Streaming
from tests.support import PASSWORD, USER, ot_hook_command, stored

WAIT = 20  # seconds: the bound on every wait in this file


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OT_HOOK_HOME", "OT_HOOK_USER", "OT_HOOK_PASSWORD", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.splitlines()]


async def send(capsys: pytest.CaptureFixture[str], state: Path, *args: str) -> Run:
    """`ot-hook send-sample` in-process, on a thread of its own: the receiver under test runs
    on this test's event loop, and the command runs one of its own."""
    capsys.readouterr()
    argv = ["send-sample", "--home", str(state), "--password", PASSWORD, *args]
    code = await asyncio.wait_for(asyncio.to_thread(main, argv), WAIT)
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


async def send_process(*args: str, stdin: bytes = b"") -> Run:
    """`ot-hook send-sample` as a user runs it, in a process of its own."""
    process = await asyncio.create_subprocess_exec(
        *ot_hook_command("send-sample", *args),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "OT_HOOK_PASSWORD": PASSWORD},
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), WAIT)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def one_line_error(run: Run) -> str:
    assert run.out == ""
    assert "Traceback" not in run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    return lines[0]


# A small HTTPS app of our own, for answers the receiver never gives ----------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Server:
    url: str
    ca: Path
    requests: int = 0


@asynccontextmanager
async def tls_app(tmp_path: Path, handler: Handler) -> AsyncIterator[Server]:
    """`handler` behind real TLS on 127.0.0.1 and a free port, with its own trustme CA."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_path = tmp_path / "app-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    server = Server("", ca_path)

    async def counting(request: web.Request) -> web.StreamResponse:
        server.requests += 1
        await request.read()
        return await handler(request)

    app = web.Application()
    app.router.add_post("/", counting)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    server.url = f"https://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        yield server
    finally:
        await runner.cleanup()


def target_for(server: Server) -> sender.Target:
    return sender.target(server.url, USER, PASSWORD, state=server.ca.parent,
                         cacert=server.ca)


async def send_events(target: sender.Target, count: int = 1,
                      **options: float) -> sender.Summary:
    now = datetime.now(UTC)
    events = samples.generate(count, samples.clock_id(now), now=now)
    deliveries = [sender.Outgoing.of(samples.body(e), e) for e in events]
    run = sender.Sender(target, sender.SendOptions(**options))  # type: ignore[arg-type]
    return await asyncio.wait_for(run.run(deliveries), WAIT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# Trust ------------------------------------------------------------------------------------


async def test_default_url_and_trust_come_from_home(
    capsys: pytest.CaptureFixture[str], state: Path, receiver: Receiver
) -> None:
    run = await send(capsys, state)
    assert run.code == 0, run.err
    [result] = run.json_lines()
    assert result["status"] == 200 and result["ok"] is True
    assert (result["action"], result["record"]) == ("Change Status", "Sales Order")
    assert "sent 1 in" in run.err and "200 x1" in run.err
    [row] = stored(state)
    assert row.outcome == "accepted" and row.event_id == result["id"]
    assert row.username == "Jimmy Hendrix"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", row.action_date or "")


async def test_a_foreign_ca_fails_in_one_line_naming_the_cacert_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, receiver: Receiver
) -> None:
    other = home.ensure_home(tmp_path / "other")
    certs.load_or_create_ca(other, None)
    line = one_line_error(await send(capsys, other, receiver.url))
    assert "certificate verify failed" in line
    assert f"not signed by the local CA {other / 'ca.pem'}" in line and "--cacert" in line


async def test_cacert_trusts_the_given_ca(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, receiver: Receiver
) -> None:
    other = home.ensure_home(tmp_path / "other")
    run = await send(capsys, other, receiver.url, "-u", USER, "--cacert", str(receiver.ca_path))
    assert run.code == 0, run.err


async def test_insecure_skips_verification_with_a_warning(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state: Path, receiver: Receiver
) -> None:
    other = home.ensure_home(tmp_path / "other")
    certs.load_or_create_ca(other, None)
    run = await send(capsys, other, receiver.url, "-u", USER, "--insecure")
    assert run.code == 0, run.err
    assert "warning: --insecure" in run.err
    assert len(stored(state)) == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("127.0.0.1:8443", "has no scheme; did you mean https://127.0.0.1:8443 ?"),
        ("http://127.0.0.1:8443/", "Order Time sends only HTTPS"),
        ("ftp://127.0.0.1/", "must start with https://"),
        ("https://127.1:8443/", "short form; write it in full, as 127.0.0.1"),
        ("https://2130706433/", "short form; write it in full, as 127.0.0.1"),
    ],
)
async def test_bad_urls_are_usage_errors(
    capsys: pytest.CaptureFixture[str], state: Path, url: str, message: str
) -> None:
    run = await send(capsys, state, url)
    assert run.code == ExitCode.USAGE
    assert message in one_line_error(run)


async def test_allow_http_sends_in_the_clear(
    capsys: pytest.CaptureFixture[str], state: Path, receiver: Receiver
) -> None:
    plain = receiver.url.replace("https://", "http://")
    run = await send(capsys, state, plain, "--allow-http")
    assert run.code == ExitCode.HTTP_ERROR  # the receiver speaks only HTTPS, and says so
    assert f"HTTP error x1: This endpoint speaks HTTPS only. Use {receiver.url}" in run.err


async def test_rate_spaces_the_deliveries(tmp_path: Path) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response()

    async with tls_app(tmp_path, ok) as server:
        summary = await send_events(target_for(server), 5, rate=25.0, concurrency=5)
        assert summary.by_status == {"200": 5} and summary.seconds >= 4 / 25


async def test_a_missing_password_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    capsys.readouterr()
    missing = tmp_path / "nope.txt"
    code = main(["send-sample", "--home", str(tmp_path), "--password-file", str(missing)])
    run = Run(code, *capsys.readouterr())
    assert run.code == ExitCode.USAGE  # a flag naming no file, as serve says
    assert f"password file {missing} does not exist" in one_line_error(run)


# What is sent -----------------------------------------------------------------------------


async def test_count_with_concurrency_lands_every_event(
    capsys: pytest.CaptureFixture[str], state: Path, receiver: Receiver
) -> None:
    run = await send(capsys, state, "--count", "120", "--concurrency", "12")
    assert run.code == 0, run.err
    results = run.json_lines()
    assert len(results) == 120 and all(r["status"] == 200 for r in results)
    rows = stored(state)
    ids = sorted(row.event_id or 0 for row in rows)
    assert ids == list(range(ids[0], ids[0] + 120))
    assert {row.outcome for row in rows} == {"accepted"}
    later = await send(capsys, state)  # a later run starts past this one's Ids
    assert later.json_lines()[0]["id"] > ids[-1]  # type: ignore[operator]


async def test_scenario_day_replays_the_report_in_time_order(
    capsys: pytest.CaptureFixture[str], state: Path, receiver: Receiver
) -> None:
    run = await send(capsys, state, "--scenario", "day")
    assert run.code == 0, run.err
    rows = stored(state)
    assert len(rows) == 11
    ids = [row.event_id for row in rows]
    assert ids == list(range(ids[0] or 0, (ids[0] or 0) + 11))
    dates = [row.action_date or "" for row in rows]
    assert dates == sorted(dates)
    assert all(re.fullmatch(r"2022-01-0[23]T10:\d\d:\d\d\.\d{7}Z", d) for d in dates)
    first, last = rows[0], rows[-1]
    assert (first.record_type, first.unique_id, first.description) == (
        6, "56", "Status Changed to Sent")
    assert (last.record_type, last.description) == (3, "Status Changed to Closed")
    items = [row for row in rows if row.record_type == 100]
    assert [(r.action_type, r.unique_id) for r in items] == [(1, "E402-EGGS"), (2, "E402-EGGS")]
    assert {row.outcome for row in rows} == {"accepted"}


async def test_scenario_list_names_day(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send-sample", "--scenario", "list"]) == 0
    assert capsys.readouterr().out.startswith("day\t11 events\t")


async def test_codes_and_fields_by_name_and_duplicate_ids(
    capsys: pytest.CaptureFixture[str], state: Path, receiver: Receiver
) -> None:
    run = await send(capsys, state, "--action", "create", "--record", "purchase-order",
                     "--unique-id", "57", "--description", "", "--username", "Ann Miller",
                     "--date", "2022-01-03T10:30:00Z", "--id", "4242", "--count", "3")
    assert run.code == 0, run.err
    rows = stored(state)
    assert [row.outcome for row in rows] == ["accepted", "duplicate", "duplicate"]
    assert {(r.event_id, r.action_type, r.record_type, r.unique_id, r.username, r.action_date)
            for r in rows} == {(4242, 1, 6, "57", "Ann Miller", "2022-01-03T10:30:00Z")}


async def test_an_unknown_name_is_a_usage_error_with_suggestions(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    run = await send(capsys, state, "--record", "Sale Ordr")
    assert run.code == ExitCode.USAGE
    assert "--record: no RecordType is called 'Sale Ordr'; did you mean" in one_line_error(run)


JSON_FILE = (
    b'{\n  "Id": 7,\n  "ActionType": 4, "RecordType": 7, "UniqueId": 890,\n'
    b'  "Description": "Status Changed to Approved", "Username": "J\xc3\xa9r\xc3\xb4me",\n'
    b'  "ActionDate": "2020-12-08T22:13:42.81Z"\n}\n'
)
LINE_1 = b'{"Id":8,"ActionType":1,"RecordType":100,"UniqueId":"E402-EGGS"}'
LINE_2 = b'{"Id": 9, "ActionType": 2, "RecordType": 100, "UniqueId": "E402-EGGS",  "x": 1.50}'
ITEM_1 = b'{"Id": 10, "ActionType": 4, "RecordType": 7, "UniqueId": 1}'


@pytest.mark.parametrize(
    ("content", "bodies", "code"),
    [
        (JSON_FILE, [JSON_FILE], ExitCode.OK),
        (LINE_1 + b"\r\n\n" + LINE_2 + b"\n", [LINE_1, LINE_2], ExitCode.OK),
        (b"[" + ITEM_1 + b",\n " + b'{"Id":11}]', [ITEM_1, b'{"Id":11}'], ExitCode.HTTP_ERROR),
    ],
    ids=["json", "json-lines", "array"],
)
async def test_file_arrives_byte_for_byte(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state: Path, receiver: Receiver,
    content: bytes, bodies: list[bytes], code: ExitCode,
) -> None:
    path = tmp_path / "events.json"
    path.write_bytes(content)
    run = await send(capsys, state, "--file", str(path))
    assert [row.body for row in stored(state)] == bodies
    assert run.code == code, run.err  # {"Id":11} is no Audit Trail object: 422


async def test_a_delivery_can_carry_its_own_content_type(
    state: Path, receiver: Receiver
) -> None:
    target = sender.target(receiver.url, USER, PASSWORD, state=state)
    plain = sender.Outgoing.of(b'{"Id": 1}', content_type="text/plain")
    summary = await sender.Sender(target).run([plain, sender.Outgoing.of(b'{"Id": 2}')])
    assert summary.sent == 2
    assert [row.content_type for row in stored(state)] == [
        "text/plain", "application/json; charset=utf-8"]


async def test_file_with_generating_options_or_bad_json_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state: Path
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"Id": 1}\n{"Id": \n')
    run = await send(capsys, state, "--file", str(path), "--count", "2")
    assert run.code == ExitCode.USAGE and "does not go with --count" in one_line_error(run)
    run = await send(capsys, state, "--file", str(path))
    assert run.code == ExitCode.BAD_INPUT and "line 2 is not JSON" in one_line_error(run)
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    run = await send(capsys, state, "--file", str(path))
    assert run.code == ExitCode.BAD_INPUT
    assert one_line_error(run).endswith("line 1 is not JSON: nested too deeply")


async def test_file_from_stdin_in_a_subprocess(state: Path, receiver: Receiver) -> None:
    content = b'{"Id":77,"ActionType":4,"RecordType":7,"UniqueId":890}\n{"Id":78}\n'
    run = await send_process("--home", str(state), "--file", "-", stdin=content)
    assert [row.body for row in stored(state)] == content.splitlines()
    assert run.code == ExitCode.HTTP_ERROR  # {"Id":78} gets a 422
    assert [result["status"] for result in run.json_lines()] == [200, 422]
    assert "HTTP error x1: Rejected" in run.err and "Traceback" not in run.err


# Failures, retries and exit codes ---------------------------------------------------------


async def test_wrong_password_is_credentials_refused(
    capsys: pytest.CaptureFixture[str], state: Path, receiver: Receiver
) -> None:
    capsys.readouterr()
    run = await send(capsys, state, "--password", "wrong")
    assert run.code == ExitCode.CREDENTIALS_REFUSED
    assert "credentials refused x1: Authentication required." in run.err
    assert stored(state) == []


async def test_500_then_200_is_retried_honouring_retry_after(tmp_path: Path) -> None:
    async def flaky(request: web.Request) -> web.Response:
        if server.requests == 1:
            return web.Response(status=500, text="try later", headers={"Retry-After": "0"})
        return web.Response(text="ok")

    async with tls_app(tmp_path, flaky) as server:
        summary = await send_events(target_for(server), retries=2)
        assert server.requests == 2
        assert summary.exit_code == ExitCode.OK and summary.by_status == {"200": 1}


async def test_a_long_wait_before_a_retry_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender, "LONG_WAIT", 0.5)  # so that a Retry-After of 1 s is said
    said: list[str] = []

    async def busy(request: web.Request) -> web.Response:
        if server.requests == 1:
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.Response(text="ok")

    async with tls_app(tmp_path, busy) as server:
        deliveries = [sender.Outgoing.of(samples.body(samples.default_event(1, "x")))]
        run = sender.Sender(target_for(server), sender.SendOptions(retries=1),
                            on_wait=said.append)
        summary = await asyncio.wait_for(run.run(deliveries), WAIT)
    assert summary.by_status == {"200": 1}
    assert said == ["503: retrying delivery 1 in 1 s (the server's Retry-After)"]


async def test_without_retries_a_500_is_an_http_error(tmp_path: Path) -> None:
    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down for maintenance\nsecond line")

    async with tls_app(tmp_path, failing) as server:
        summary = await send_events(target_for(server))
        assert summary.exit_code == ExitCode.HTTP_ERROR
        assert summary.failures == {sender.Failure.HTTP: (1, "down for maintenance")}


async def test_other_4xx_are_never_retried(tmp_path: Path) -> None:
    async def refusing(request: web.Request) -> web.Response:
        return web.Response(status=422, text="not an event")

    async with tls_app(tmp_path, refusing) as server:
        summary = await send_events(target_for(server), retries=3)
        assert server.requests == 1 and summary.exit_code == ExitCode.HTTP_ERROR


async def test_a_huge_answer_is_cut_off_after_its_start(tmp_path: Path) -> None:
    stream = Streaming(status=500, first=b"too much\nand more")
    async with tls_app(tmp_path, stream.handle) as server:
        summary = await send_events(target_for(server), 2)
        sent = await stream.stopped(2)
    assert server.requests == 2  # the cut-off connection was not used for the second one
    assert summary.failures == {sender.Failure.HTTP: (2, "too much")}
    # The sender hung up after the start, long before the end (the rest is still in the
    # sockets' buffers, a few MB at most), instead of reading all 50 MB into memory.
    assert all(n < HUGE for n in sent), sent


async def test_the_start_read_is_bounded_and_says_when_it_was_cut(tmp_path: Path) -> None:
    import aiohttp

    stream = Streaming(first=b"y" * 100)

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.query.get("short"):
            return web.Response(text="z" * 1000)  # exactly the limit: not cut
        return await stream.handle(request)

    async with tls_app(tmp_path, answer) as server, aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=target_for(server).ssl)
    ) as session:
        async with session.post(server.url, data=b"{}") as response:
            start = await sender.read_start(response, 1000)
        async with session.post(server.url + "?short=1", data=b"{}") as response:
            short = await sender.read_start(response, 1000)
    assert start == (b"y" * 100 + b"x" * 900, True)
    assert short == (b"z" * 1000, False)


async def test_an_answer_that_stalls_after_its_start_times_out(tmp_path: Path) -> None:
    async def stalling(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=500)
        await response.prepare(request)
        await response.write(b"partial\n")
        await asyncio.sleep(WAIT)
        return response

    async with tls_app(tmp_path, stalling) as server:
        summary = await send_events(target_for(server), timeout=0.5)
    assert set(summary.failures) == {sender.Failure.TIMEOUT}


ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mEVIL"  # sets the title, clears the screen, red
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mEVIL"  # as printable() shows it


async def test_the_summary_shows_a_servers_escapes_instead_of_obeying_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async def evil(request: web.Request) -> web.Response:
        return web.Response(status=500, text=ESCAPES)

    async with tls_app(tmp_path, evil) as server:
        run = await send(capsys, tmp_path, server.url, "--cacert", str(server.ca))
    assert run.code == ExitCode.HTTP_ERROR
    assert f"HTTP error x1: {SHOWN}" in run.err.splitlines()
    assert "\x1b" not in run.err + run.out and "\x07" not in run.err + run.out
    assert run.json_lines()[0]["message"] == ESCAPES  # JSON keeps the text, escaped by JSON


def test_a_terminal_summary_shows_a_servers_escapes_instead_of_obeying_them() -> None:
    out = io.StringIO()
    report = Report(Terminal(stdout=out, stdout_isatty=True, no_color=True), 1, False)
    delivery = sender.Outgoing.of(samples.body(samples.default_event(5, datetime.now(UTC))))
    result = sender.Result(0, delivery, 500, sender.Failure.HTTP, ESCAPES, 3.2, 1)
    with report:
        report.result(result)
    report.summary(sender.Summary.of([result], 0.1))
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # the report's own colours
    assert "\x1b" not in text and "\x07" not in text
    assert text.splitlines()[-1] == f"HTTP error x1: {SHOWN}"


async def test_connection_refused_names_the_addresses_tried(
    capsys: pytest.CaptureFixture[str], state: Path, receiver: Receiver
) -> None:
    port = free_port()
    run = await send(capsys, state, f"https://localhost:{port}/", "--retries", "1")
    assert run.code == ExitCode.CONNECTION_FAILED
    [result] = run.json_lines()
    assert result["attempts"] == 2  # connection errors are retried
    tried = {str(info[4][0]) for info in socket.getaddrinfo("localhost", port,
                                                            type=socket.SOCK_STREAM)}
    message = str(result["message"])
    assert f"connection refused by localhost port {port}" in message
    assert all(address in message for address in tried)
    assert "connection failed x1: connection refused" in run.err


async def test_a_receiver_that_never_answers_times_out(tmp_path: Path) -> None:
    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(WAIT)
        return web.Response()

    async with tls_app(tmp_path, silent) as server:
        # In a process of its own: a connection cut by the timeout closes over a few turns of
        # that process's loop, which a thread in the test process would not always give it.
        run = await send_process(server.url, "--home", str(tmp_path), "--cacert",
                                 str(server.ca), "--timeout", "0.3", "--retries", "2")
        assert run.code == ExitCode.TIMED_OUT
        assert server.requests == 1  # a timeout may have been delivered: not retried
        assert f"no answer from {server.url} within 0.3 s (--timeout)" in run.err


@pytest.mark.parametrize(("signum", "as_background_job"), [
    (signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGHUP, False),
    (signal.SIGTERM, True),  # a script's background job ignores SIGINT
])
async def test_ctrl_c_or_a_kill_exits_130_with_the_summary_so_far(
    tmp_path: Path, signum: signal.Signals, as_background_job: bool
) -> None:
    second = asyncio.Event()
    seen = 0

    async def answers_once(request: web.Request) -> web.Response:
        nonlocal seen
        seen += 1
        if seen == 1:
            return web.Response(text="ok")
        second.set()
        await asyncio.sleep(WAIT)
        return web.Response()

    async with tls_app(tmp_path, answers_once) as server:
        process = await asyncio.create_subprocess_exec(
            *ot_hook_command("send-sample", server.url, "--cacert", str(server.ca),
                             "--home", str(tmp_path), "--password", "x", "--count", "3"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            if as_background_job else None,
        )
        await asyncio.wait_for(second.wait(), WAIT)
        process.send_signal(signum)
        out, err = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == ExitCode.INTERRUPTED
    [first] = [json.loads(line) for line in out.decode().splitlines()]
    assert first["status"] == 200
    lines = err.decode().splitlines()
    assert lines[0].startswith("sent 1 in ") and lines[0].endswith(": 200 x1")
    assert lines[-1] == "ot-hook: error: interrupted after 1 of 3 deliveries"
    assert "Traceback" not in err.decode()


def test_the_exit_code_is_the_first_failure_in_order() -> None:
    def result(status: int | None, failure: sender.Failure | None) -> sender.Result:
        return sender.Result(0, sender.Outgoing(b"{}"), status, failure, str(failure), 1.0, 1)

    results = [result(500, sender.Failure.HTTP), result(None, sender.Failure.TIMEOUT),
               result(401, sender.Failure.CREDENTIALS), result(200, None)]
    summary = sender.Summary.of(results, 1.0)
    assert summary.exit_code == ExitCode.CREDENTIALS_REFUSED
    assert summary.lines()[2:] == [
        "credentials refused x1: credentials refused",
        "timed out x1: timed out",
        "HTTP error x1: HTTP error",
    ]
    assert sender.Summary.of([result(204, None)], 1.0).exit_code == ExitCode.OK


# Small pieces -----------------------------------------------------------------------------


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert sender.retry_after("3") == 3.0
    assert sender.retry_after("Mon, 01 Jan 2024 12:00:05 GMT", now) == 5.0
    assert sender.retry_after("soon") is None and sender.retry_after(None) is None
    assert sender.backoff(1, 120.0) == sender.RETRY_AFTER_MAX
    assert 0 < sender.backoff(3, None) <= 4 * sender.BACKOFF_FIRST


def test_the_authorization_header_is_utf8_basic() -> None:
    assert sender.basic_authorization("d\u00e9mo", "p:w") == "Basic ZMOpbW86cDp3"


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert sender.percentile(values, 0.5) == 50.0
    assert sender.percentile(values, 0.99) == 99.0
    assert sender.percentile([], 0.5) == 0.0


def test_dates_are_dotnet_style() -> None:
    moment = datetime(2022, 1, 3, 10, 26, 12, 217845, tzinfo=UTC)
    assert samples.dotnet_date(moment) == "2022-01-03T10:26:12.2178450Z"


def test_a_terminal_gets_a_line_per_delivery_then_the_summary() -> None:
    out = io.StringIO()
    report = Report(Terminal(stdout=out, stdout_isatty=True, no_color=True), 1, False)
    delivery = sender.Outgoing.of(samples.body(samples.default_event(5, datetime.now(UTC))))
    with report:
        report.result(sender.Result(0, delivery, 200, None, "Accepted.", 3.2, 1))
    report.summary(sender.Summary.of([], 0.1))
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert text.splitlines()[0] == "200  Id 5  Change Status Sales Order 890  3 ms"
    assert "sent 0 in 0.10 s (0.0/s)\n" in text  # nothing after it: no dangling colon


def test_help_does_not_import_aiohttp() -> None:
    code = ("import sys; from ot_hook.cli import main; main(['send-sample', '--help']); "
            "print('aiohttp' in sys.modules, 'trustme' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=WAIT, check=True)
    assert "Examples:" in result.stdout
    assert result.stdout.splitlines()[-1] == "False False"


def test_credentials_in_the_url_are_refused_without_echoing_them(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    code = main(["send-sample", "https://demo:hunter2@127.0.0.1:9/", "--home", str(state)])
    err = capsys.readouterr().err
    assert code == 2
    assert "not in the URL" in err and "hunter2" not in err


def test_an_empty_array_file_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state: Path
) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    code = main(["send-sample", "--home", str(state), "-f", str(empty)])
    assert code == 7
    assert "empty array" in capsys.readouterr().err


def test_a_broken_connection_is_named_without_aiohttp_internals() -> None:
    import aiohttp

    from ot_hook.sender import _broke

    dumped = aiohttp.ServerDisconnectedError("<RawResponseMessage(version=HttpVersion(...))>")
    assert _broke(dumped) == "ServerDisconnectedError"
    plain = aiohttp.ServerDisconnectedError()
    assert _broke(plain) == "ServerDisconnectedError: Server disconnected"
    assert _broke(aiohttp.ClientPayloadError("Response payload is not completed")) == \
        "ClientPayloadError: Response payload is not completed"
    assert _broke(aiohttp.ClientOSError(None, "Can not write request body")) == \
        "ClientOSError: Can not write request body"  # no "[Errno None]"
    assert _broke(aiohttp.ClientOSError(32, "Broken pipe")) == \
        "ClientOSError: [Errno 32] Broken pipe"


@pytest.mark.parametrize("command", ["send-sample", "replay"])
@pytest.mark.parametrize("timeout", ["inf", "nan", "0"])
def test_a_timeout_that_is_not_a_number_of_seconds_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], state: Path, command: str, timeout: str
) -> None:
    code = main([command, "https://127.0.0.1:9/", "--home", str(state), "--timeout", timeout])
    err = capsys.readouterr().err
    assert code == 2 and "--timeout" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["send-sample", "replay"])
def test_a_concurrency_beyond_reason_is_a_usage_error_not_a_hang(
    capsys: pytest.CaptureFixture[str], state: Path, command: str
) -> None:
    # Each one is a task and a connection: 99999999999 of them took minutes and gigabytes.
    code = main([command, "https://127.0.0.1:9/", "--home", str(state),
                 "--concurrency", "99999999999"])
    err = capsys.readouterr().err
    assert code == 2 and "--concurrency" in err and err.count("\n") == 1


def test_the_kept_password_goes_only_to_the_receiver_of_home(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from ot_hook import home
    from tests.support import recording_app

    state = home.ensure_home(tmp_path / "home")
    kept, _ = home.load_or_create_password(state)  # what serve makes when given none
    with recording_app() as (url, received):  # the user's own app, on this machine
        code = main(["send-sample", f"{url}/hook", "--allow-http", "--home", str(state)])
        err = capsys.readouterr().err
    assert code == 2 and received == []
    assert "no password for" in err and "goes only to that receiver" in err
    assert kept not in err
    # To where this home's receiver listens (none runs: any https port on this machine).
    from ot_hook import credentials

    chosen = credentials.for_sender(None, None, None, state, "https://localhost:8443/")
    assert chosen.password == kept
    # While serve runs: its own address and port only, not another listener on loopback.
    home.write_serve_info(state, home.ServeInfo(
        url="https://127.0.0.1:8443/", host="127.0.0.1", port=8443, pid=os.getpid(),
        user=USER, ca=None, started_at="now"))
    for ours in ("https://127.0.0.1:8443/", "https://localhost:8443/x"):
        assert credentials.for_sender(None, None, None, state, ours).password == kept
    for other in ("https://127.0.0.2:8443/", "https://127.0.0.1:9443/", "http://127.0.0.1:8443/"):
        with pytest.raises(credentials.CredentialsError, match="no password for"):
            credentials.for_sender(None, None, None, state, other)


async def test_a_receiver_killed_before_is_named_when_the_default_is_tried(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """serve killed with -9 leaves serve.json behind: send-sample says why it tries the
    default port, not the port that receiver had."""
    state = home.ensure_home(tmp_path / "home")
    finished = subprocess.Popen(["true"])  # a pid that has surely ended
    finished.wait()
    home.write_serve_info(state, home.ServeInfo(
        url="https://127.0.0.1:18443/", host="127.0.0.1", port=18443, pid=finished.pid,
        user=USER, ca=None, started_at="2026-12-04T00:00:00Z"))
    run = await send(capsys, state, "--timeout", "2", "-u", USER)
    assert (f"the receiver at https://127.0.0.1:18443/ (pid {finished.pid}) has stopped; "
            "trying https://127.0.0.1:8443/") in run.err
