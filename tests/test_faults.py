"""What the receiver survives: a crash, a full store, slow clients, hostile bodies, load.

Every test here is bounded in count and time and talks only to loopback addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ot_hook import home, serve
from ot_hook.events import InvalidDelivery, parse_body
from ot_hook.serve import Receiver
from tests.support import (
    back_up,
    basic,
    ot_hook_command,
    post,
    post_sync,
    running,
    running_in_thread,
    sample,
    start_serve,
    stored,
)

MAX_BODY = 256 * 1024


async def eventually(condition: Callable[[], bool], within: float = 5) -> bool:
    """Wait for a condition that another thread makes true (the status log writes later)."""
    for _ in range(int(within / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


def integrity(state: Path) -> str:
    conn = sqlite3.connect(state / home.STORE)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


async def post_many(
    url: str, ca: Path, bodies: list[bytes], connections: int,
    on_answer: asyncio.Event | None = None, answered_enough: int = 0,
) -> list[int | None]:
    """POST every body over `connections` keep-alive connections; None where it failed."""
    statuses: list[int | None] = [None] * len(bodies)
    context = ssl.create_default_context(cafile=str(ca))
    connector = aiohttp.TCPConnector(ssl=context, limit=connections)
    done = 0
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(index: int) -> None:
            nonlocal done
            try:
                async with session.post(url, data=bodies[index],
                                        headers={"Authorization": basic()}) as response:
                    await response.read()
                    statuses[index] = response.status
            except (aiohttp.ClientError, OSError):
                return
            done += 1
            if on_answer is not None and done == answered_enough:
                on_answer.set()

        await asyncio.gather(*(one(i) for i in range(len(bodies))))
    return statuses


def test_sigkill_loses_no_acknowledged_delivery(state: Path) -> None:
    served = start_serve(state, "--quiet")
    bodies = [sample(n) for n in range(1, 2001)]

    async def load() -> list[int | None]:
        enough = asyncio.Event()
        task = asyncio.create_task(post_many(served.info.url, state / "ca.pem", bodies, 16,
                                             enough, answered_enough=300))
        await asyncio.wait_for(enough.wait(), 60)
        served.process.send_signal(signal.SIGKILL)  # mid-stream, no chance to clean up
        return await task

    statuses = asyncio.run(load())
    served.wait()
    acknowledged = {n + 1 for n, status in enumerate(statuses) if status == 200}
    assert 300 <= len(acknowledged) < 2000
    assert integrity(state) == "ok"
    kept = {row.event_id for row in stored(state)}
    assert acknowledged <= kept
    # serve.json is left behind, but names a process that is gone: no command trusts it.
    assert (state / "serve.json").exists() and home.read_serve_info(state) is None

    again = start_serve(state, "--quiet")  # the lock died with the process
    try:
        retried = asyncio.run(post_many(again.info.url, state / "ca.pem", [sample(5000)], 1))
        assert retried == [200]
    finally:
        assert again.stop() == 0
    assert integrity(state) == "ok"


async def test_a_full_store_gets_503_then_recovers_by_itself(state: Path) -> None:
    err = io.StringIO()
    async with running(state, stderr=err, max_store_pages=20) as receiver:
        statuses = []
        for n in range(40):
            statuses.append((await post(receiver, sample(n, Description="x" * 2000))).status)
            if statuses[-1] == 503:
                break
        assert statuses[-1] == 503, "the store never filled up"
        assert set(statuses) == {200, 503}
        assert await eventually(lambda: "STORE FAILING" in err.getvalue())
        assert "full" in err.getvalue()
        # Make room, as `ot-hook prune` would, while the receiver keeps running.
        conn = sqlite3.connect(state / home.STORE)
        conn.execute("DELETE FROM deliveries")
        conn.commit()
        conn.close()
        assert (await post(receiver, sample(1000))).status == 200
        assert await eventually(lambda: "store: writing again" in err.getvalue())
    assert [row.event_id for row in stored(state)] == [1000]


async def test_a_killed_writer_gets_503s_never_200s_then_a_new_one_takes_over(
    state: Path,
) -> None:
    err = io.StringIO()
    async with running(state, stderr=err) as receiver:
        assert receiver.ca_path is not None
        first_writer = receiver.store.writer_pid
        assert first_writer is not None
        bodies = [sample(n) for n in range(1, 1201)]
        enough = asyncio.Event()
        load = asyncio.create_task(post_many(receiver.url, receiver.ca_path, bodies, 8,
                                             enough, answered_enough=200))
        await asyncio.wait_for(enough.wait(), 60)
        os.kill(first_writer, signal.SIGKILL)  # mid-stream: rows in flight, a commit maybe
        statuses = await load
        assert set(statuses) <= {200, 503}
        assert 503 in statuses, "the writer was killed after the load had finished"
        assert await eventually(lambda: "STORE FAILING" in err.getvalue())
        # A new writer starts by itself once the pause after the crash has passed.
        for _ in range(50):
            answer = await post(receiver, sample(5000))
            if answer.status == 200:
                break
            assert answer.status == 503
            await asyncio.sleep(0.1)
        assert answer.status == 200
        assert receiver.store.writer_pid not in (None, first_writer)
        assert await eventually(lambda: "store: writing again" in err.getvalue())
    acknowledged = {n + 1 for n, status in enumerate(statuses) if status == 200}
    kept = {row.event_id for row in stored(state)}
    assert acknowledged | {5000} <= kept
    assert integrity(state) == "ok"


async def test_a_stopped_writer_is_said_and_so_is_its_return(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGSTOP (or a hung disk): deliveries wait unanswered, and no request line would say so.
    monkeypatch.setattr(serve, "WRITER_STALLED", 1.0)
    monkeypatch.setattr(serve, "WATCH_INTERVAL", 0.1)
    err = io.StringIO()
    async with running(state, stderr=err) as receiver:
        writer = receiver.store.writer_pid
        assert writer is not None
        os.kill(writer, signal.SIGSTOP)
        try:
            waiting = asyncio.create_task(post(receiver, sample(1)))
            assert await eventually(lambda: "has not answered for" in err.getvalue())
            assert "1 delivery waits unanswered" in err.getvalue()
        finally:
            os.kill(writer, signal.SIGCONT)
        assert (await waiting).status == 200
        assert await eventually(lambda: "the writer answers again" in err.getvalue())
    assert [row.event_id for row in stored(state)] == [1]


async def open_tls(receiver: Receiver) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = ssl.create_default_context(cafile=str(receiver.ca_path))
    return await asyncio.open_connection("127.0.0.1", receiver.port, ssl=context,
                                         server_hostname="localhost")


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass  # an error page before the close is fine
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True


async def test_slow_clients_do_not_stop_a_delivery_and_are_closed(state: Path) -> None:
    async with running(state, idle_timeout=1.5) as receiver:
        dribblers = [await open_tls(receiver) for _ in range(50)]
        for _, writer in dribblers:
            writer.write(b"POST / HTTP/1.1\r\nHost: localhost\r\n")
        raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", receiver.port)
        for _ in range(3):  # keep dribbling while a real delivery comes in
            for _, writer in dribblers:
                writer.write(b"X-Slow: 1\r\n")
            await asyncio.sleep(0.2)
        answer = await asyncio.wait_for(post(receiver, sample(1)), 5)
        assert answer.status == 200
        results = await asyncio.gather(*(closed_by_server(r, 5) for r, _ in dribblers))
        assert all(results), f"{results.count(False)} half-sent connections stayed open"
        assert await closed_by_server(raw_reader, 5), "a silent connection stayed open"
        for _, writer in [*dribblers, (raw_reader, raw_writer)]:
            writer.close()
    assert [row.event_id for row in stored(state)] == [1]


async def test_a_body_that_stops_halfway_gets_408_and_is_kept(state: Path) -> None:
    async with running(state, idle_timeout=1.0) as receiver:
        reader, writer = await open_tls(receiver)
        writer.write(b"POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + basic().encode()
                     + b"\r\nContent-Length: 500\r\n\r\n" + b'{"Id": 1, ')
        answer = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    [row] = stored(state)
    assert (row.outcome, row.http_status, row.body) == ("rejected", 408, b'{"Id": 1, ')


async def test_a_refused_request_with_a_half_sent_body_is_closed_within_the_timeout(
        state: Path) -> None:
    """After a 401, aiohttp reads the rest of the body for up to 10 s (so the sender sees
    the answer): never longer than --idle-timeout."""
    async with running(state, idle_timeout=1.0) as receiver:
        reader, writer = await open_tls(receiver)
        writer.write(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 146\r\n\r\n"
                     + sample(5)[:30])
        answer = await asyncio.wait_for(reader.readline(), 5)
        assert answer.startswith(b"HTTP/1.1 401")
        assert await closed_by_server(reader, 4), "the connection lingered past the timeout"
        writer.close()
    assert stored(state) == []


async def test_a_transfer_coding_other_than_chunked_is_refused_by_name(state: Path) -> None:
    body = gzip.compress(sample(4))
    async with running(state) as receiver:
        reader, writer = await open_tls(receiver)
        writer.write(b"POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + basic().encode()
                     + b"\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                     + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    assert status.startswith(b"HTTP/1.1 400 ")
    [row] = stored(state)
    assert row.outcome == "rejected" and row.body == body
    assert row.reason is not None and row.reason.startswith(
        "Transfer-Encoding 'gzip, chunked' is not supported")


async def test_a_body_shorter_than_its_content_length_is_kept_as_rejected(state: Path) -> None:
    async with running(state) as receiver:
        _, writer = await open_tls(receiver)
        writer.write(b"POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + basic().encode()
                     + b"\r\nContent-Length: 500\r\n\r\n" + b'{"Id": 2, ')
        await writer.drain()
        writer.close()  # the sender goes away mid-body
        for _ in range(100):
            if stored(state):
                break
            await asyncio.sleep(0.05)
        assert (await post(receiver, sample(3))).status == 200  # still up
    rows = stored(state)
    assert rows[0].outcome == "rejected"
    assert rows[0].body == b'{"Id": 2, '
    assert rows[0].reason is not None and "could not be read" in rows[0].reason


async def test_oversized_headers_get_a_4xx_not_a_5xx(receiver: Receiver, state: Path) -> None:
    answer = await post(receiver, sample(1), headers={"X-Huge": "a" * 20_000})
    assert 400 <= answer.status < 500
    assert (await post(receiver, sample(2))).status == 200


# Hostile bodies ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    with running_in_thread(tmp_path_factory.mktemp("hostile") / "home",
                           max_body=MAX_BODY) as receiver:
        yield receiver


def expected_status(body: bytes) -> int:
    """What the bad-input rules of serve say this body gets."""
    if len(body) > MAX_BODY:
        return 413
    try:
        parse_body(body)
    except InvalidDelivery as exc:
        return exc.status
    return 200


def check_delivery(receiver: Receiver, body: bytes, headers: dict[str, str] | None = None,
                   expected: int | None = None) -> None:
    status, text = post_sync(receiver, body, headers)
    assert status < 500, text
    assert status == (expected if expected is not None else expected_status(body)), text
    row_number = int(re.search(r"row (\d+)", text).group(1))  # type: ignore[union-attr]
    [row] = [r for r in stored(receiver.state) if r.row == row_number]
    assert row.http_status == status
    assert row.outcome in (("accepted", "duplicate") if status == 200 else ("rejected",))


HOSTILE = {
    "nesting 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "object nesting": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "10,000 digit Id": b'{"Id": ' + b"9" * 10_000 + b', "ActionType": 4, "RecordType": 7, '
    b'"UniqueId": 1}',
    "10,000 digit float": b'{"Id": 1, "ActionType": 4, "RecordType": 7, "UniqueId": 1.'
    + b"5" * 10_000 + b"}",
    "NaN": b'{"Id": NaN}',
    "-Infinity": b'{"Id": -Infinity}',
    "duplicate keys": b'{"Id": 1, "ActionType": 4, "ActionType": 4, "RecordType": 7, '
    b'"UniqueId": 1}',
    "array of objects": b"[" + sample(1) + b"," + sample(2) + b"]",
    "invalid UTF-8": b'{"Id": 1, "Description": "\xc3\x28"}',
    "lone surrogate escape": sample(7, Description="\ud800"),
    "NUL bytes": b"\x00" * 100,
    "too big": b" " * (MAX_BODY + 1),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_fixed_hostile_bodies(hostile_receiver: Receiver, name: str) -> None:
    check_delivery(hostile_receiver, HOSTILE[name])


def test_gzip_bodies_are_decoded_and_capped(hostile_receiver: Receiver) -> None:
    gzipped = {"Content-Encoding": "gzip"}
    check_delivery(hostile_receiver, gzip.compress(sample(99)), gzipped, expected=200)
    bomb = gzip.compress(b"[" * (50 * MAX_BODY))
    check_delivery(hostile_receiver, bomb, gzipped, expected=413)
    check_delivery(hostile_receiver, b"not gzip at all", gzipped, expected=400)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
audit_like = st.fixed_dictionaries(
    {"Id": st.integers() | st.booleans() | st.text(max_size=3),
     "ActionType": st.integers(-5, 5000), "RecordType": st.integers(-5, 5000),
     "UniqueId": st.integers() | st.text(max_size=10) | st.none()},
    optional={"Description": st.text() | st.none(), "Username": st.text(),
              "ActionDate": st.text(max_size=40), "Extra": json_values},
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.binary(max_size=2048))
def test_random_bytes(hostile_receiver: Receiver, body: bytes) -> None:
    check_delivery(hostile_receiver, body)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=json_values | audit_like)
def test_random_json(hostile_receiver: Receiver, value: object) -> None:
    check_delivery(hostile_receiver, json.dumps(value).encode())


# Load -------------------------------------------------------------------------------------


def test_load_with_duplicates_every_200_is_stored_and_tail_shows_it(state: Path) -> None:
    served = start_serve(state, "--quiet")
    unique = 18_000
    ids = list(range(1, unique + 1)) + [n * 9 for n in range(1, 2001)]  # 2,000 repeats
    try:
        statuses = asyncio.run(post_many(served.info.url, state / "ca.pem",
                                         [sample(n) for n in ids], 64))
    finally:
        assert served.stop() == 0
    assert statuses.count(200) == len(ids)
    rows = stored(state)
    outcomes = [row.outcome for row in rows]
    assert outcomes.count("accepted") == unique
    assert outcomes.count("duplicate") == 2_000
    accepted_row = {row.event_id: row.row for row in rows if row.outcome == "accepted"}
    for row in rows:
        if row.outcome == "duplicate":
            assert row.duplicate_of == accepted_row[row.event_id]

    shown = subprocess.run(
        ot_hook_command("tail", "--home", str(state), "--json", "--no-follow", "-n", "20000"),
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()
    assert len(shown) == len(ids)
    assert [json.loads(line)["row"] for line in shown] == [row.row for row in rows]


# `rm events.db*`, or `rm events.db` alone, which leaves the old -wal and -shm behind.
@pytest.mark.parametrize("removed", ["events.db*", "events.db"])
async def test_a_store_removed_while_serving_is_made_again(state: Path, removed: str) -> None:
    err = io.StringIO()
    async with running(state, stderr=err) as receiver:
        assert (await post(receiver, sample(1))).status == 200
        for leftover in state.glob(removed):
            leftover.unlink()
        assert (await post(receiver, sample(2))).status == 200
        assert (await post(receiver, sample(3))).status == 200
        assert await eventually(lambda: "removed or replaced" in err.getvalue())
    # Every 200 since is readable, by tail too.
    assert [row.event_id for row in stored(state)] == [2, 3]
    assert "STORE FAILING" not in err.getvalue()


async def back_up_then_store_more(receiver: Receiver, state: Path) -> Path:
    """Deliveries 1 to 3, a backup of the store with them, then 4 to 6 in the store only."""
    for n in range(1, 4):
        assert (await post(receiver, sample(n))).status == 200
    backup = back_up(state)
    for n in range(4, 7):
        assert (await post(receiver, sample(n))).status == 200
    return backup


async def test_a_backup_put_in_place_of_the_store_is_not_corrupted(state: Path) -> None:
    """`mv backup.db events.db` while serving: the old store's -wal must not be applied to the
    backup (SQLite would, and the file would be malformed with every 200 since lost)."""
    err = io.StringIO()
    async with running(state, stderr=err) as receiver:
        backup = await back_up_then_store_more(receiver, state)
        os.replace(backup, state / "events.db")
        assert (await post(receiver, sample(7))).status == 200
        assert await eventually(lambda: "removed or replaced" in err.getvalue())
    conn = sqlite3.connect(state / "events.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert [row.event_id for row in stored(state)] == [1, 2, 3, 7]


async def test_a_backup_put_in_place_is_safe_to_open_before_the_next_delivery(
        state: Path) -> None:
    """The same swap, with no delivery after it: serve follows it by itself within about a
    second (said once), so prune, the sqlite3 shell or a restart that open the file then
    find the backup as it was, not the old store's log applied to it."""
    err = io.StringIO()
    async with running(state, stderr=err) as receiver:
        backup = await back_up_then_store_more(receiver, state)
        os.replace(backup, state / "events.db")
        assert await eventually(lambda: "removed or replaced" in err.getvalue())
        conn = sqlite3.connect(state / "events.db")  # as the sqlite3 shell would
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert [n for (n,) in conn.execute("SELECT event_id FROM deliveries")] == [1, 2, 3]
        finally:
            conn.close()
        assert (await post(receiver, sample(7))).status == 200
    assert [row.event_id for row in stored(state)] == [1, 2, 3, 7]
    assert err.getvalue().count("removed or replaced") == 1


@pytest.mark.parametrize("removed", [("-wal", "-shm"), ("-wal",), ("-shm",)])
def test_a_log_removed_while_serving_loses_nothing_at_a_crash(
        state: Path, removed: tuple[str, ...]) -> None:
    """`rm events.db-wal events.db-shm` while serve runs: SQLite goes on writing to the
    removed log, where a crash would take every delivery answered since (and any not yet
    copied into events.db). serve copies the old log in and starts a new one, and says so."""
    served = start_serve(state, "--quiet")
    url, ca = served.info.url, state / "ca.pem"
    assert asyncio.run(post_many(url, ca, [sample(n) for n in (1, 2, 3)], 1)) == [200] * 3
    for suffix in removed:
        (state / f"{home.STORE}{suffix}").unlink()
    assert asyncio.run(post_many(url, ca, [sample(n) for n in (4, 5)], 1)) == [200] * 2
    time.sleep(serve.WATCH_INTERVAL * 1.5)  # serve's other connection follows by itself
    assert asyncio.run(post_many(url, ca, [sample(6)], 1)) == [200]
    children = Path(f"/proc/{served.process.pid}/task/{served.process.pid}/children")
    for pid in [int(child) for child in children.read_text().split()]:
        os.kill(pid, signal.SIGKILL)  # the writer, as a power cut would stop it
    served.process.send_signal(signal.SIGKILL)
    served.wait()
    assert integrity(state) == "ok"
    assert [row.event_id for row in stored(state)] == [1, 2, 3, 4, 5, 6]
    assert served.stderr.count(f"{home.STORE}-wal or -shm was removed") == 1, served.stderr


def test_a_log_removed_just_before_serve_stops_loses_nothing(state: Path) -> None:
    """serve stops before its own connection has followed the new log (it looks once a
    second): closing that connection last must not delete the new -wal, which holds the
    deliveries stored since."""
    served = start_serve(state, "--quiet")
    url, ca = served.info.url, state / "ca.pem"
    assert asyncio.run(post_many(url, ca, [sample(n) for n in (1, 2, 3)], 1)) == [200] * 3
    for suffix in ("-wal", "-shm"):
        (state / f"{home.STORE}{suffix}").unlink()
    assert asyncio.run(post_many(url, ca, [sample(n) for n in (4, 5)], 1)) == [200] * 2
    assert served.stop() == 0
    assert integrity(state) == "ok"
    assert [row.event_id for row in stored(state)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("stop", ["kill", "clean"])
def test_a_log_removed_while_idle_and_opened_by_a_reader_loses_nothing(
        state: Path, stop: str) -> None:
    """`rm events.db-wal` while serve is idle, then a reader (tail, the sqlite3 shell)
    opens the store: it pairs the old -shm with a new, empty -wal. serve still copies the
    old log in (within a second, by itself), and neither a crash nor a stop loses a row."""
    served = start_serve(state, "--quiet")
    url, ca = served.info.url, state / "ca.pem"
    assert asyncio.run(post_many(url, ca, [sample(n) for n in (1, 2, 3)], 1)) == [200] * 3
    (state / f"{home.STORE}-wal").unlink()
    reader = sqlite3.connect(f"file:{state / home.STORE}?mode=ro", uri=True)
    with contextlib.suppress(sqlite3.Error):  # SQLite may call the pair an I/O error
        reader.execute("SELECT count(*) FROM deliveries").fetchone()
    reader.close()
    time.sleep(serve.WATCH_INTERVAL * 2.5)  # serve looks once a second
    if stop == "kill":
        children = Path(f"/proc/{served.process.pid}/task/{served.process.pid}/children")
        for pid in [int(child) for child in children.read_text().split()]:
            os.kill(pid, signal.SIGKILL)
        served.process.send_signal(signal.SIGKILL)
        served.wait()
    else:
        assert served.stop() == 0
    assert integrity(state) == "ok"
    assert [row.event_id for row in stored(state)] == [1, 2, 3]
