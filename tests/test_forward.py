"""serve --forward-to: relays to a real local app (an aiohttp server in the test)."""

from __future__ import annotations

import asyncio
import io
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from ot_hook import home
from ot_hook.forwarder import outcome_of
from ot_hook.serve import ForwardOptions
from tests.streaming import HUGE, Streaming
from tests.support import basic, post, running, sample, stored


@dataclass
class App:
    """The user's app: records what it receives, answers what the test tells it to."""

    url: str = ""
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    answer: Callable[[int], int] = lambda n: 200  # status for the n-th request (from 1)
    delay: Callable[[], float] = lambda: 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(self.delay())
        self.received.append((body, dict(request.headers)))
        self.arrived.set()
        status = self.answer(len(self.received))
        return web.Response(status=status, text="ok" if status < 300 else "nope")


@asynccontextmanager
async def user_app(app: App, port: int = 0) -> AsyncIterator[App]:
    async with serving(app.handle, port) as url:
        app.url = url
        yield app


@asynccontextmanager
async def serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], port: int = 0
) -> AsyncIterator[str]:
    """`handler` as the app's webhook on 127.0.0.1; yields its URL."""
    web_app = web.Application()
    web_app.router.add_post("/ordertime-webhook", handler)
    runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site.port}/ordertime-webhook"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def raw_app(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """An app that answers in raw bytes (what aiohttp would not send), on 127.0.0.1."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    finally:
        server.close()
        await server.wait_closed()


def relay_rows(state: Path) -> list[tuple[int, str, int]]:
    conn = sqlite3.connect(state / home.STORE)
    try:
        return conn.execute("SELECT row, state, attempts FROM relays ORDER BY row").fetchall()
    finally:
        conn.close()


def attempts(state: Path) -> list[tuple[int, int, int | None, str | None, str]]:
    conn = sqlite3.connect(state / home.STORE)
    try:
        return conn.execute(
            "SELECT row, attempt, status, error, state FROM relay_attempts ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


async def until(condition: Callable[[], bool], within: float = 10) -> None:
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    assert condition(), "timed out waiting"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_relayed_bytes_equal_stored_bytes_and_auth_passes_through(state: Path) -> None:
    async with user_app(App()) as app, running(state, forward=ForwardOptions(app.url)) as r:
        body = b'\xef\xbb\xbf' + sample(1)
        await post(r, body, headers={"Content-Type": "application/json; charset=utf-8"})
        await post(r, b"not json")  # rejected: never relayed
        await until(lambda: len(app.received) == 1)
        await until(lambda: relay_rows(state) == [(1, "delivered", 1)])
    [(got, headers)] = app.received
    assert got == body == stored(state)[0].body
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["Authorization"] == basic()
    assert attempts(state) == [(1, 1, 200, None, "delivered")]


async def test_forward_user_sets_its_own_credentials(state: Path) -> None:
    async with user_app(App()) as app:
        forward = ForwardOptions(app.url, user="app", password="app-secret")
        async with running(state, forward=forward) as r:
            await post(r, sample(1))
            await until(lambda: len(app.received) == 1)
    assert app.received[0][1]["Authorization"] == basic("app", "app-secret")


async def test_a_target_that_comes_up_later_gets_the_delivery(state: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/ordertime-webhook"
    async with running(state, forward=ForwardOptions(url, retries=6)) as r:
        answer = await post(r, sample(1))
        assert answer.status == 200  # the sender is never held up by the relay
        await until(lambda: len(attempts(state)) >= 1)
        assert attempts(state)[0][3] is not None  # connection refused, recorded
        async with user_app(App(), port=port) as app:
            await until(lambda: len(app.received) == 1, within=20)
            await until(lambda: relay_rows(state)[0][1] == "delivered")
    assert app.received[0][0] == sample(1)


async def test_a_target_that_stays_down_leaves_a_recorded_failure(state: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/ordertime-webhook"
    async with running(state, forward=ForwardOptions(url, retries=2)) as r:
        statuses = [(await post(r, sample(n))).status for n in (1, 2)]
        await until(lambda: [s for _, s, _ in relay_rows(state)] == ["failed", "failed"])
        assert (await post(r, sample(3))).status == 200  # still answering
    assert statuses == [200, 200]
    tried = [a for a in attempts(state) if a[0] == 1]
    assert [a[1] for a in tried] == [1, 2, 3]
    assert [a[4] for a in tried] == ["pending", "pending", "failed"]
    assert all(a[2] is None and a[3] for a in tried)


async def test_429_and_5xx_are_retried_other_4xx_are_not(state: Path) -> None:
    answers = {1: 503, 2: 200, 3: 404}
    async with (
        user_app(App(answer=lambda n: answers.get(n, 200))) as app,
        running(state, forward=ForwardOptions(app.url)) as r,
    ):
        await post(r, sample(1))
        await until(lambda: relay_rows(state) == [(1, "delivered", 2)])
        await post(r, sample(2))
        await until(lambda: len(relay_rows(state)) == 2 and relay_rows(state)[1][1] == "failed")
    assert relay_rows(state)[1] == (2, "failed", 1)


async def test_a_restart_resumes_what_was_not_relayed(state: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/ordertime-webhook"
    async with running(state, forward=ForwardOptions(url, retries=50)) as r:
        await post(r, sample(1))
        await until(lambda: len(attempts(state)) >= 1)
    assert relay_rows(state)[0][1] == "pending"
    async with user_app(App(), port=port) as app, running(state,
                                                          forward=ForwardOptions(url)):
        await until(lambda: len(app.received) == 1)
        await until(lambda: relay_rows(state)[0][1] == "delivered")
    # The sender's Authorization lived in memory only: a resumed relay goes without it.
    assert "Authorization" not in app.received[0][1]


async def test_serve_without_forward_to_says_relays_are_pending(state: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/ordertime-webhook"
    async with running(state, forward=ForwardOptions(url, retries=50)) as r:
        await post(r, sample(1))
        await until(lambda: len(attempts(state)) >= 1)
    err = io.StringIO()
    async with running(state, stderr=err):
        await until(lambda: "1 relays of an earlier --forward-to are pending" in err.getvalue())
    assert relay_rows(state)[0][1] == "pending"  # left waiting, not given up


async def test_a_401_to_a_relay_sent_without_authorization_says_why(state: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/ordertime-webhook"
    async with running(state, forward=ForwardOptions(url, retries=50)) as r:
        await post(r, sample(1))
        await until(lambda: len(attempts(state)) >= 1)
    checking = App(answer=lambda n: 200 if "Authorization" in checking.received[-1][1] else 401)
    async with user_app(checking, port=port), running(state, forward=ForwardOptions(url)):
        await until(lambda: relay_rows(state)[0][1] == "failed")
    last = attempts(state)[-1]
    assert last[2] == 401 and last[3] is not None and "--forward-user" in last[3]


async def test_a_restart_with_another_target_records_where_relays_went(state: Path) -> None:
    gone = f"http://127.0.0.1:{free_port()}/ordertime-webhook"  # nothing listens there
    async with running(state, forward=ForwardOptions(gone, retries=50)) as r:
        await post(r, sample(1))
        await until(lambda: len(attempts(state)) >= 1)
    async with user_app(App()) as app, running(state, forward=ForwardOptions(app.url)):
        await until(lambda: relay_rows(state)[0][1] == "delivered")
    conn = sqlite3.connect(state / home.STORE)
    try:
        [(target,)] = conn.execute("SELECT target FROM relays").fetchall()
    finally:
        conn.close()
    assert target == app.url  # where it was delivered, not where it was first meant to go


async def test_each_record_keeps_its_arrival_order_under_concurrency(state: Path) -> None:
    rng = random.Random(7)
    app = App(delay=lambda: rng.uniform(0, 0.02), answer=lambda n: 503 if n % 5 == 0 else 200)
    events = []
    for n in range(60):  # six records, ten events each, interleaved
        events.append(sample(100 + n, RecordType=7, UniqueId=890 + n % 6,
                             Description=f"step {n // 6}"))
    async with user_app(app), running(state, forward=ForwardOptions(app.url)) as r:
        await asyncio.gather(*(post(r, body) for body in events))
        await until(lambda: all(s == "delivered" for _, s, _ in relay_rows(state)), within=30)
    rows = {row.row: row for row in stored(state)}
    delivered_order = [rows_by_body(rows, body) for body, _ in app.received]
    for unique_id in range(890, 896):
        mine = [row for row in delivered_order if rows[row].unique_id == str(unique_id)]
        firsts = list(dict.fromkeys(mine))  # a retried relay appears twice; keep its first
        assert firsts == sorted(firsts), f"UniqueId {unique_id} relayed out of order"


def rows_by_body(rows: dict[int, object], body: bytes) -> int:
    return next(n for n, row in rows.items() if row.body == body)  # type: ignore[attr-defined]


async def test_a_huge_answer_is_cut_off_after_its_start(state: Path) -> None:
    stream = Streaming()
    async with serving(stream.handle) as url, running(state, forward=ForwardOptions(url)) as r:
        # One record: the second relay goes after the first, when its connection is closed.
        await post(r, sample(1))
        await post(r, sample(2))
        await until(lambda: [s for _, s, _ in relay_rows(state)] == ["delivered"] * 2)
        sent = await stream.stopped(2)
    assert attempts(state) == [(1, 1, 200, None, "delivered"), (2, 1, 200, None, "delivered")]
    # The relay hung up after the start, long before the end (the rest is still in the
    # sockets' buffers, a few MB at most), instead of reading all 50 MB into memory.
    assert all(n < HUGE for n in sent), sent


def test_outcome_policy() -> None:
    assert outcome_of(204, 1, 5, None) == ("delivered", None)
    assert outcome_of(404, 1, 5, None) == ("failed", None)
    assert outcome_of(401, 1, 5, None) == ("failed", None)
    state, wait = outcome_of(503, 1, 5, 2.0)
    assert (state, wait) == ("pending", 2.0)
    assert outcome_of(None, 6, 5, None) == ("failed", None)
    assert outcome_of(429, 3, 5, None)[0] == "pending"


async def test_an_untrusted_certificate_fails_at_once_with_the_fix(
    state: Path, tmp_path: Path
) -> None:
    # The target is another ot-hook receiver, whose local CA the relay was not told about.
    async with running(tmp_path / "other") as other:
        forward = ForwardOptions(other.url, retries=5)
        async with running(state, forward=forward) as r:
            await post(r, sample(1))
            await until(lambda: relay_rows(state) == [(1, "failed", 1)])
    [(_, attempt, status, error, final)] = attempts(state)
    assert (attempt, status, final) == (1, None, "failed")
    assert error is not None and "--forward-cacert" in error


async def test_forwarding_to_itself_is_refused(state: Path) -> None:
    import io

    from ot_hook.serve import Receiver, ServeError
    from tests.support import options

    port = free_port()
    forward = ForwardOptions(f"https://localhost:{port}/")
    with pytest.raises(ServeError, match="points at this receiver itself"):
        async with Receiver(options(state, port=port, forward=forward), io.StringIO()):
            pass


async def test_a_relayed_delivery_is_not_relayed_again(state: Path) -> None:
    # Two receivers forwarding to each other would loop; the relay header stops it.
    async with user_app(App()) as app, running(state, forward=ForwardOptions(app.url)) as r:
        await post(r, sample(1), headers={"X-OT-Hook-Relay": "7"})
        await post(r, sample(2))
        await until(lambda: len(app.received) == 1)
        await asyncio.sleep(0.2)
    assert [body for body, _ in app.received] == [sample(2)]
    assert app.received[0][1]["X-OT-Hook-Relay"] == "2"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_a_failed_relay_not_followed(state: Path, status: int) -> None:
    # aiohttp would follow a 301 or 302 as a GET without the body, and the app's 200 to that
    # GET would have counted as delivered: a delivery lost while the store said relayed.
    gets: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": "/new-webhook"})

    async def new_webhook(request: web.Request) -> web.Response:
        gets.append(request.method)
        return web.Response(text="ok")

    web_app = web.Application()
    web_app.router.add_post("/ordertime-webhook", moved)
    web_app.router.add_route("*", "/new-webhook", new_webhook)
    runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site.port}/ordertime-webhook"
    try:
        async with running(state, forward=ForwardOptions(url, retries=3)) as r:
            await post(r, sample(1))
            await until(lambda: relay_rows(state) == [(1, "failed", 1)])
    finally:
        await runner.cleanup()
    assert gets == []
    [(_, _, got, error, final)] = attempts(state)
    assert (got, final) == (status, "failed")
    assert error == "redirected to /new-webhook; pass that address to --forward-to"


async def test_a_200_whose_body_stalls_counts_and_is_not_relayed_again(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ot_hook import forwarder

    monkeypatch.setattr(forwarder, "TIMEOUT", 0.5)
    received = 0
    done = asyncio.Event()

    async def stalling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        received += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok, got")  # then nothing
        await writer.drain()
        await done.wait()
        writer.close()

    async with raw_app(stalling) as url:
        try:
            async with running(state, forward=ForwardOptions(url, retries=3)) as r:
                await post(r, sample(1))
                await until(lambda: relay_rows(state) == [(1, "delivered", 1)])
                await asyncio.sleep(0.5)  # no second attempt follows
        finally:
            done.set()  # the app's connection ends before the app stops
    assert received == 1
    assert attempts(state) == [(1, 1, 200, None, "delivered")]


async def test_an_answer_that_is_not_http_is_one_line_naming_it(state: Path) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"garbage\r\nmore\r\n\r\n")
        await writer.drain()
        writer.close()

    async with raw_app(garbage) as url, running(state, forward=ForwardOptions(url, retries=0)) \
            as r:
        await post(r, sample(1))
        await until(lambda: relay_rows(state) == [(1, "failed", 1)])
    [(_, _, status, error, _)] = attempts(state)
    assert status is None and error is not None
    assert error.startswith("the app's answer is not valid HTTP: ") and "\n" not in error


async def test_a_backup_moved_in_place_is_relayed_from_and_recorded_in(state: Path) -> None:
    # The relays to make are read from the file that is the store now, and an attempt that
    # was under way when the file was swapped is not recorded against the new file's rows.
    release = asyncio.Event()
    app = App()
    first = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        app.received.append((body, dict(request.headers)))
        if len(app.received) == 1:
            first.set()
            await release.wait()  # the first relay is still under way when the file goes
        return web.Response(text="ok")

    async with serving(handle) as url, running(state, forward=ForwardOptions(url)) as r:
        path = state / home.STORE
        await post(r, sample(1))
        await first.wait()
        backup = state / "backup.db"
        source, copy = sqlite3.connect(path), sqlite3.connect(backup)
        source.backup(copy)  # row 1, its relay still pending
        source.close()
        copy.close()
        backup.replace(path)
        release.set()
        await post(r, sample(2))
        await until(lambda: sorted(b for b, _ in app.received) == sorted(
            [sample(1), sample(1), sample(2)]))
        await until(lambda: relay_rows(state) == [(1, "delivered", 1), (2, "delivered", 1)])
    # Row 1 was relayed from each file once; the swap left nothing pending or sent twice more.
    assert len(app.received) == 3


async def test_an_outcome_that_cannot_be_recorded_is_retried_not_the_relay(
        state: Path) -> None:
    # Another program holds the store's write lock while a relay is under way: the outcome
    # waits to be recorded (said on stderr) instead of the relay going out again and again.
    release = asyncio.Event()
    app = App()

    async def handle(request: web.Request) -> web.Response:
        app.received.append((await request.read(), dict(request.headers)))
        await release.wait()
        return web.Response(text="ok")

    err = io.StringIO()
    async with serving(handle) as url, running(state, err, forward=ForwardOptions(url)) as r:
        await post(r, sample(1))
        await until(lambda: len(app.received) == 1)
        holder = sqlite3.connect(state / home.STORE, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the store locked, past the 5 s busy timeout
        release.set()
        await until(lambda: "cannot be recorded" in err.getvalue(), within=15)
        holder.execute("ROLLBACK")
        holder.close()
        await until(lambda: relay_rows(state) == [(1, "delivered", 1)], within=15)
    assert len(app.received) == 1
    assert attempts(state) == [(1, 1, 200, None, "delivered")]


async def test_relays_edited_into_nonsense_or_a_foreign_store_stop_nothing(
        state: Path) -> None:
    err = io.StringIO()
    async with user_app(App(answer=lambda n: 500 if n == 1 else 200)) as app, \
            running(state, err, forward=ForwardOptions(app.url)) as r:
        path = state / home.STORE
        await post(r, sample(1))
        await until(lambda: relay_rows(state) == [(1, "pending", 1)])
        conn = sqlite3.connect(path)
        conn.execute("UPDATE relays SET attempts = 'abc', next_at = 'x'")  # by hand
        conn.commit()
        conn.close()
        await until(lambda: relay_rows(state) == [(1, "delivered", 1)])
        # Another program's SQLite file in place of the store: relays wait, and say why...
        path.replace(state / "real.db")
        foreign = sqlite3.connect(path)
        foreign.execute("CREATE TABLE t (x)")
        foreign.commit()
        foreign.close()
        await until(lambda: "relays wait" in err.getvalue(), within=15)
        (state / "real.db").replace(path)  # ...and go on once it is back
        assert (await post(r, sample(2))).status == 200
        await until(lambda: len(app.received) == 3, within=15)
    assert [body for body, _ in app.received] == [sample(1), sample(1), sample(2)]
