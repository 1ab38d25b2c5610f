"""`ot-hook tail` shows each relay attempt of `serve --forward-to` as it happens, naming the
delivery's row: a real receiver relaying to a real local app, and a following `tail --json`
in a subprocess; the library against hand-made stores for what a receiver cannot be made to
do on cue (markup in an error, a store that gains the relay tables while followed)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ot_hook import home, store, tail
from ot_hook.serve import ForwardOptions
from ot_hook.terminal import Terminal
from tests.support import post, running, sample
from tests.test_forward import App, free_port, relay_rows, until, user_app
from tests.test_tail import INJECTION, TailProcess, wait_ready

RELAY_KEYS = ["relay_of", "attempt", "attempted_at", "status", "millis", "error", "state"]
WAIT = 10  # seconds, at most, for anything to show up


@pytest.fixture
def followers() -> Iterator[list[TailProcess]]:
    started: list[TailProcess] = []
    yield started
    for process in started:
        process.close()


async def follow(state: Path, followers: list[TailProcess], *args: str) -> TailProcess:
    follower = TailProcess(state, "--json", "-n", "0", *args)
    followers.append(follower)
    await wait_ready(follower)
    return follower


# With a real receiver and a real app -----------------------------------------------------


async def test_a_retried_relay_shows_as_two_lines_naming_the_row(
    state: Path, followers: list[TailProcess]
) -> None:
    answers = {2: 503}  # the app's first answer to the second delivery
    app = App(answer=lambda n: answers.get(n, 200))
    async with user_app(app), running(state, forward=ForwardOptions(app.url)) as receiver:
        follower = await follow(state, followers, "--unique-id", "891")
        await post(receiver, sample(1, UniqueId=890))  # filtered out, and so is its relay
        await until(lambda: relay_rows(state) == [(1, "delivered", 1)])
        await post(receiver, sample(2, UniqueId=891))
        lines = [await follower.next_json() for _ in range(3)]
    delivery, first, second = lines
    assert delivery["row"] == 2 and "relay_of" not in delivery
    assert list(first) == list(second) == RELAY_KEYS
    assert (first["relay_of"], first["attempt"], first["status"], first["error"],
            first["state"]) == (2, 1, 503, None, "pending")
    assert (second["relay_of"], second["attempt"], second["status"], second["error"],
            second["state"]) == (2, 2, 200, None, "delivered")
    assert first["attempted_at"].endswith("Z")
    assert first["attempted_at"] <= second["attempted_at"]
    assert isinstance(second["millis"], float) and second["millis"] >= 0


async def test_a_target_that_is_down_shows_the_connection_error(
    state: Path, followers: list[TailProcess]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/ordertime-webhook"
    async with running(state, forward=ForwardOptions(url, retries=1)) as receiver:
        follower = await follow(state, followers)
        await post(receiver, sample(1))
        delivery, first, last = [await follower.next_json() for _ in range(3)]
    assert delivery["row"] == 1
    assert [(x["relay_of"], x["attempt"], x["status"], x["state"]) for x in (first, last)] == [
        (1, 1, None, "pending"), (1, 2, None, "failed")]
    assert first["error"].startswith("cannot connect") and last["error"]


async def test_no_relays_hides_them(state: Path, followers: list[TailProcess]) -> None:
    async with (
        user_app(App()) as app,
        running(state, forward=ForwardOptions(app.url)) as receiver,
    ):
        follower = await follow(state, followers, "--no-relays")
        await post(receiver, sample(1))
        await until(lambda: relay_rows(state) == [(1, "delivered", 1)])
        await post(receiver, sample(2))  # committed after the relay: it would come between
        lines = [await follower.next_json() for _ in range(2)]
    assert [line.get("row") for line in lines] == [1, 2]


# The library against hand-made stores ----------------------------------------------------


def make_store(path: Path, version: int) -> sqlite3.Connection:
    """A store at schema `version` (as an older ot-hook left it), and a connection to write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for target in range(1, version + 1):
        conn.executescript(
            f"BEGIN; {store.MIGRATIONS[target]}; PRAGMA user_version = {target}; COMMIT;"
        )
    return conn


def now(offset: float = 0) -> str:
    return tail.stored_time(datetime.now(UTC) + timedelta(seconds=offset))


def add_delivery(conn: sqlite3.Connection, unique_id: str, received_at: str | None = None) -> int:
    body = sample(1, UniqueId=unique_id)
    cursor = conn.execute(
        "INSERT INTO deliveries (received_at, outcome, http_status, warnings, method, target, "
        "headers, body, body_size, event_id, action_type, record_type, unique_id) "
        "VALUES (?, 'accepted', 200, '[]', 'POST', '/', '[]', ?, ?, 1, 4, 7, ?)",
        (received_at or now(), body, len(body), unique_id),
    )
    return int(cursor.lastrowid or 0)


def add_attempt(conn: sqlite3.Connection, row: int, attempt: int, status: int | None,
                error: str | None, state: str, attempted_at: str | None = None) -> None:
    conn.execute(
        "INSERT INTO relay_attempts (row, attempt, attempted_at, status, millis, error, state) "
        "VALUES (?, ?, ?, ?, 4.25, ?, ?)",
        (row, attempt, attempted_at or now(), status, error, state),
    )


@contextlib.contextmanager
def following(path: Path, terminal: Terminal, **spec: Any) -> Iterator[None]:
    """tail.run in a thread, following `path`, until the block ends."""
    done = threading.Event()
    spec = {"last": 0, "poll_interval": 0.01, "wait_interval": 0.01, **spec}
    follow_spec = tail.Follow(path, **spec)
    thread = threading.Thread(target=tail.run, args=(follow_spec, terminal),
                              kwargs={"stop": done.is_set})
    thread.start()
    try:
        wait_for(lambda: "following" in terminal.stderr.getvalue())  # type: ignore[attr-defined]
        yield
    finally:
        done.set()
        thread.join(timeout=WAIT)
    assert not thread.is_alive()


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def json_terminal() -> Terminal:
    return Terminal(stdout=io.StringIO(), stderr=io.StringIO(), stdout_isatty=False)


def lines_of(terminal: Terminal) -> list[dict[str, Any]]:
    text: str = terminal.stdout.getvalue()  # type: ignore[attr-defined]
    return [json.loads(line) for line in text.splitlines()]


def test_relay_lines_on_a_terminal_are_literal_and_coloured(state: Path) -> None:
    path = state / home.STORE
    conn = make_store(path, store.SCHEMA_VERSION)
    out = io.StringIO()
    terminal = Terminal(stdout=out, stderr=io.StringIO(), stdout_isatty=True, no_color=False)
    with following(path, terminal):
        row = add_delivery(conn, "890")
        add_attempt(conn, row, 1, None, "cannot connect: " + INJECTION, "pending")
        add_attempt(conn, row, 2, 200, None, "delivered")
        other = add_delivery(conn, "891")
        add_attempt(conn, other, 1, 301, "redirected to " + INJECTION, "failed")
        wait_for(lambda: out.getvalue().count("\n") == 5)
    conn.close()
    _, retried, delivered, _, redirected = out.getvalue().splitlines()
    plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in (retried, delivered)]
    assert all(line.startswith(f"#{row} ") for line in plain)
    assert plain[0].endswith("  relay      cannot connect: [red]boom[/red] "
                             "[link=https://evil.example]click[/link] "
                             "\\x1b[2J\\x1b]0;pwned\\x07 (4.2 ms), retrying")
    assert plain[1].endswith("  relay      attempt 2 → 200 in 4.2 ms (delivered)")
    assert re.sub(r"\x1b\[[0-9;]*m", "", redirected).endswith(
        "  relay      → 301 in 4.2 ms: redirected to [red]boom[/red] "
        "[link=https://evil.example]click[/link] \\x1b[2J\\x1b]0;pwned\\x07 (failed)")
    assert "\x1b[2J" not in out.getvalue() and "\x07" not in out.getvalue()
    assert "(delivered)" in delivered and "32m" in delivered  # green
    assert "33m" in retried  # yellow: still pending


def test_a_store_without_relay_tables_is_followed_until_they_appear(state: Path) -> None:
    path = state / home.STORE
    conn = make_store(path, 2)  # before serve --forward-to existed
    terminal = json_terminal()
    with following(path, terminal):
        add_delivery(conn, "890")
        wait_for(lambda: len(lines_of(terminal)) == 1)
        conn.close()
        store.open_for_writing(path).close()  # a newer serve migrates it while tail follows
        conn = sqlite3.connect(path, isolation_level=None)
        add_attempt(conn, 1, 1, 204, None, "delivered")
        wait_for(lambda: len(lines_of(terminal)) == 2)
    conn.close()
    delivery, relay = lines_of(terminal)
    assert delivery["row"] == 1
    assert relay == {"relay_of": 1, "attempt": 1, "attempted_at": relay["attempted_at"],
                     "status": 204, "millis": 4.2, "error": None, "state": "delivered"}


def test_the_backlog_is_deliveries_only_and_relays_follow_commit_order(state: Path) -> None:
    path = state / home.STORE
    conn = make_store(path, store.SCHEMA_VERSION)
    add_delivery(conn, "890")
    add_attempt(conn, 1, 1, 200, None, "delivered")  # old: not shown
    terminal = json_terminal()
    with following(path, terminal, last=5):
        wait_for(lambda: len(lines_of(terminal)) == 1)
        conn.execute("BEGIN")  # one commit, so that one read sees it all
        add_delivery(conn, "891")  # row 2
        add_attempt(conn, 2, 1, 503, None, "pending")
        # A clock that went back: the attempt of row 3 looks older than row 3 itself.
        add_delivery(conn, "892", received_at=now(1))  # row 3
        add_attempt(conn, 3, 1, 200, None, "delivered", attempted_at=now(-60))
        add_attempt(conn, 2, 2, 200, None, "delivered", attempted_at=now(2))
        add_delivery(conn, "893", received_at=now(3))  # row 4
        conn.execute("COMMIT")
        wait_for(lambda: len(lines_of(terminal)) == 7)
    conn.close()
    shown = [(x["row"],) if "row" in x else (x["relay_of"], x["attempt"])
             for x in lines_of(terminal)]
    assert shown == [(1,), (2,), (2, 1), (3,), (3, 1), (2, 2), (4,)]


def test_interleave_keeps_each_stream_in_order() -> None:
    def d(row: int, at: str) -> Any:
        return SimpleNamespace(row=row, received_at=at)

    def a(row: int, at: str) -> Any:
        return SimpleNamespace(row=row, attempted_at=at)

    found = [d(5, "t1"), d(6, "t4"), d(7, "t3")]
    attempts = [a(4, "t2"), a(6, "t0"), a(5, "t5")]
    merged = list(tail.interleave(iter(found), iter(attempts)))
    assert merged == [found[0], attempts[0], found[1], attempts[1], found[2], attempts[2]]
    assert list(tail.interleave(iter(found), iter([]))) == found
    assert list(tail.interleave(iter([]), iter(attempts))) == attempts
