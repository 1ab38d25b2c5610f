"""`ot-hook tail` against a real receiver: filters, JSON lines, literal text, local time,
following in a subprocess across a store that appears late and a receiver restart."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ot_hook import home, render, store, tail
from ot_hook.cli import main
from ot_hook.serve import Receiver
from ot_hook.terminal import Terminal
from tests.support import back_up, ot_hook_command, post, running, sample

LINE_TIMEOUT = 10  # seconds to wait for one line from a following tail
INJECTION = "[red]boom[/red] [link=https://evil.example]click[/link] \x1b[2J\x1b]0;pwned\x07"

# A small, varied day: (body, what it is), posted in this order.
DAY: list[bytes] = [
    sample(1, ActionType=1, RecordType=3, UniqueId=556, Description=""),
    sample(2, ActionType=4, RecordType=3, UniqueId=556, Description="Status Changed to Ready"),
    sample(3, ActionType=1, RecordType=100, UniqueId="E402-EGGS", Username="Ann"),
    sample(4, ActionType=4, RecordType=7, UniqueId=1877,
           Description="Status Changed to Approved"),
    sample(4, ActionType=4, RecordType=7, UniqueId=1877),  # a duplicate of row 4
    b"{not json",  # rejected
    sample(5, Description=INJECTION, Username=INJECTION),
]


def _fill(state: Path, bodies: list[bytes]) -> None:
    async def go() -> None:
        async with running(state) as receiver:
            for body in bodies:
                await post(receiver, body)

    asyncio.run(go())


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory whose store holds DAY (rows 1 to 7)."""
    state = tmp_path_factory.mktemp("day") / "home"
    _fill(state, DAY)
    return state


def shown(state: Path, filters: tail.Filters = tail.Filters(), last: int = 100,  # noqa: B008
          ) -> list[dict[str, Any]]:
    out = io.StringIO()
    spec = tail.Follow(state / home.STORE, filters, last=last, follow=False)
    tail.run(spec, Terminal(stdout=out, stderr=io.StringIO(), stdout_isatty=False))
    return [json.loads(line) for line in out.getvalue().splitlines()]


def pretty(state: Path, *, no_color: bool = False, **look: Any) -> str:
    out = io.StringIO()
    spec = tail.Follow(state / home.STORE, last=100, follow=False)
    terminal = Terminal(stdout=out, stderr=io.StringIO(), stdout_isatty=True, no_color=no_color)
    tail.run(spec, terminal, tail.Look(**look))
    return out.getvalue()


# What is shown ---------------------------------------------------------------------------


def test_json_lines_carry_every_key_and_the_event_as_received(day: Path) -> None:
    lines = shown(day)
    assert [line["row"] for line in lines] == [1, 2, 3, 4, 5, 6, 7]
    first = lines[3]
    assert list(first) == [
        "row", "received_at", "outcome", "http_status", "reason", "warnings", "duplicate_of",
        "remote", "target", "content_type", "event", "ActionTypeName", "RecordTypeName", "body",
    ]
    assert first["event"] == json.loads(DAY[3])
    assert first["body"] == DAY[3].decode()
    assert (first["ActionTypeName"], first["RecordTypeName"]) == ("Change Status", "Sales Order")
    assert first["received_at"].endswith("Z") and first["outcome"] == "accepted"
    assert (lines[4]["outcome"], lines[4]["duplicate_of"]) == ("duplicate", 4)
    rejected = lines[5]
    assert rejected["outcome"] == "rejected" and rejected["event"] is None
    assert rejected["http_status"] == 400 and rejected["reason"]
    assert lines[2]["event"]["UniqueId"] == "E402-EGGS"


def test_a_body_that_is_not_utf8_comes_as_base64(state: Path) -> None:
    _fill(state, [b"\xff\xfe{"])
    [line] = shown(state)
    assert "body" not in line and line["body_base64"] == "//57"


@pytest.mark.parametrize(
    ("args", "rows"),
    [
        ({"actions": ["4"]}, [2, 4, 5, 7]),
        ({"actions": ["create"]}, [1, 3]),
        ({"actions": ["Change-Status", "1"]}, [1, 2, 3, 4, 5, 7]),
        ({"records": ["work order"]}, [1, 2]),
        ({"records": ["100", "SalesOrder"]}, [3, 4, 5, 7]),
        ({"ids": [4]}, [4, 5]),
        ({"unique_ids": ["E402-EGGS", "556"]}, [1, 2, 3]),
        ({"outcomes": ["rejected"]}, [6]),
        ({"outcomes": ["duplicate", "ACCEPTED"]}, [1, 2, 3, 4, 5, 7]),
        ({"grep": "ready"}, [2]),
        ({"grep": "ann"}, [3]),
        ({"grep": "not json"}, [6]),  # found in the body of a rejected delivery
        ({"grep": "100%"}, []),  # wildcards are taken literally
        ({"grep": "Status_Changed"}, []),
        ({"grep": "APPROVED"}, [3, 4, 5]),
        ({"since": "1h"}, [1, 2, 3, 4, 5, 6, 7]),
        ({"since": "2999-01-01T00:00+05:30"}, []),
        ({"actions": ["4"], "records": ["7"], "outcomes": ["duplicate"]}, [5]),
    ],
)
def test_each_filter_and_their_combination(day: Path, args: dict[str, Any],
                                           rows: list[int]) -> None:
    filters = tail.resolve_filters(**args)
    assert [line["row"] for line in shown(day, filters)] == rows


def test_grep_finds_text_after_a_nul(state: Path) -> None:
    # SQLite's LIKE stops at a NUL; a hostile sender could hide text from --grep behind one.
    _fill(state, [sample(1, Description="a\u0000 needle"), b"\x00 needle {"])
    filters = tail.resolve_filters(grep="NEEDLE")
    assert [line["row"] for line in shown(state, filters)] == [1, 2]


def test_last_n_counts_matching_rows_only(day: Path) -> None:
    filters = tail.resolve_filters(outcomes=["accepted"])
    assert [line["row"] for line in shown(day, filters, last=2)] == [4, 7]
    assert shown(day, last=0) == []


@pytest.mark.parametrize(
    "filters",
    [tail.Filters(), tail.Filters(ids=(4, 5)), tail.Filters(unique_ids=("1877",)),
     tail.Filters(since="2024-01-03T00:00:00.000000Z")],
)
def test_last_n_and_lookups_use_an_index_not_a_scan(day: Path, filters: tail.Filters) -> None:
    """A million stored rows must not make `tail -n 10 --id 4` slow (see bench/bench_tail.py)."""
    where, params = filters.sql()
    sql = "SELECT row FROM deliveries WHERE row <= 1000" + (f" AND ({where})" if where else "")
    with contextlib.closing(store.open_for_reading(day / home.STORE)) as conn:
        plan = " / ".join(step[3] for step in conn.execute(
            f"EXPLAIN QUERY PLAN {sql} ORDER BY row DESC LIMIT 10", params))
    assert plan.startswith(("SEARCH", "MULTI-INDEX OR")) and "SCAN" not in plan, plan


def test_since_reads_durations_and_local_or_offset_times() -> None:
    now = datetime(2024, 1, 3, 12, 0, tzinfo=UTC)
    kolkata = ZoneInfo("Asia/Kolkata")
    assert tail.parse_since("10m", now=now) == "2024-01-03T11:50:00.000000Z"
    assert tail.parse_since("1h30m", now=now) == "2024-01-03T10:30:00.000000Z"
    assert tail.parse_since("2024-01-03T10:17", tz=kolkata) == "2024-01-03T04:47:00.000000Z"
    assert tail.parse_since("2024-01-03T10:17Z", tz=kolkata) == "2024-01-03T10:17:00.000000Z"
    assert tail.parse_since("2024-01-03 10:17-05:00") == "2024-01-03T15:17:00.000000Z"
    with pytest.raises(tail.FilterError):
        tail.parse_since("last tuesday")


def test_last_n_reaches_the_newest_row_even_with_the_counter_edited(state: Path) -> None:
    _fill(state, [sample(n) for n in (1, 2, 3)])
    conn = sqlite3.connect(state / home.STORE)
    conn.execute("UPDATE sqlite_sequence SET seq = 1 WHERE name = 'deliveries'")  # by hand
    conn.commit()
    conn.close()
    assert [line["row"] for line in shown(state, last=2)] == [2, 3]


def test_description_and_username_are_shown_literally(day: Path) -> None:
    text = pretty(day)
    seventh = text.splitlines()[-1]
    assert "[red]boom[/red]" in seventh and "[link=https://evil.example]click[/link]" in seventh
    assert "\\x1b[2J" in seventh and "\\x1b]0;pwned\\x07" in seventh
    assert "\x1b[2J" not in text and "\x1b]" not in text and "\x07" not in text
    assert "\x1b[" in text  # colours are on: the test would prove nothing otherwise


def test_verbose_shows_headers_and_pretty_json_literally(day: Path) -> None:
    text = pretty(day, verbose=True, no_color=True)
    assert '"ActionType": 4,' in text and "Content-Type: application/octet-stream" in text
    assert "\x1b[2J" not in text and "\\u001b[2J" in text


def test_verbose_json_lines_carry_the_stored_headers(day: Path) -> None:
    out = io.StringIO()
    spec = tail.Follow(day / home.STORE, last=1, follow=False)
    tail.run(spec, Terminal(stdout=out, stderr=io.StringIO(), stdout_isatty=False),
             tail.Look(verbose=True))
    [line] = [json.loads(text) for text in out.getvalue().splitlines()]
    assert ["Content-Type", "application/octet-stream"] in line["headers"]
    assert all(name.lower() != "authorization" for name, _ in line["headers"])
    assert list(line)[-2:] == ["headers", "body"]
    assert "headers" not in shown(day)[0]  # only with -v


def test_no_color_means_no_colour_codes(day: Path) -> None:
    text = pretty(day, no_color=True)
    assert "\x1b[3" not in text  # rich keeps bold with NO_COLOR, but drops every colour
    assert "Change Status" in text and "E402-EGGS" in text


def test_times_are_local_with_their_offset_or_utc() -> None:
    stored = "2024-01-03T04:47:05.123456Z"
    kolkata, new_york = ZoneInfo("Asia/Kolkata"), timezone(timedelta(hours=-5))
    assert render.format_time(stored, tz=kolkata) == "2024-01-03 10:17:05.123 +05:30"
    assert render.format_time(stored, tz=new_york) == "2024-01-02 23:47:05.123 -05:00"
    assert render.format_time(stored, utc=True) == "2024-01-03 04:47:05.123Z"


def test_the_system_zone_is_honoured(day: Path) -> None:
    """TZ in the environment decides local time (a subprocess, so TZ is read at start)."""
    code = (
        "import sys; from pathlib import Path; from ot_hook import tail; "
        "from ot_hook.terminal import Terminal; "
        "tail.run(tail.Follow(Path(sys.argv[1]), last=1, follow=False), "
        "Terminal(stdout_isatty=True, no_color=True), tail.Look(utc=sys.argv[2] == 'utc'))"
    )
    env = {**os.environ, "TZ": "Asia/Kolkata"}
    local, utc = (
        subprocess.run([sys.executable, "-c", code, str(day / home.STORE), how], env=env,
                       capture_output=True, text=True, timeout=30, check=True).stdout
        for how in ("local", "utc")
    )
    received = datetime.fromisoformat(shown(day)[-1]["received_at"])
    expected = received.astimezone(ZoneInfo("Asia/Kolkata")).strftime("%Y-%m-%d %H:%M:%S")
    assert f"{expected}." in local and " +05:30" in local
    assert received.strftime("%Y-%m-%d %H:%M:%S.") in utc and "Z " in utc


# The command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--status", "lost"],
        ["--action", "Teleport"],
        ["--record", "no such record"],
        ["--since", "yesterday"],
        ["-n", "-1"],
        ["--id", "four"],
        ["--bogus"],
    ],
)
def test_bad_flags_give_one_line_and_exit_2(
    args: list[str], day: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tail", "--home", str(day), "--no-follow", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("ot-hook: error:")


def test_no_store_without_follow_says_so_and_exits_1(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tail", "--home", str(state), "--no-follow"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "no store" in captured.err


def test_an_empty_or_foreign_store_file_is_named_for_what_it_is(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state.mkdir(parents=True, exist_ok=True)
    path = state / "events.db"
    path.touch()  # what a copy of a store that serve was writing may be, without its -wal
    assert main(["tail", "--home", str(state), "--no-follow"]) == 1
    err = capsys.readouterr().err
    assert "is empty" in err and "events.db-wal" in err and "no store" not in err
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id)")
    conn.commit()
    conn.close()
    assert main(["tail", "--home", str(state), "--no-follow"]) == 1
    err = capsys.readouterr().err
    assert "is an SQLite file that ot-hook did not make (it has the tables orders)" in err
    assert err.count("\n") == 1
    path.unlink()
    path.mkdir()
    assert main(["tail", "--home", str(state), "--no-follow"]) == 1
    assert "events.db is a directory, not a store" in capsys.readouterr().err


def test_a_pipe_gets_json_without_asking(day: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", "--home", str(day), "--no-follow", "-n", "2"]) == 0
    assert [json.loads(x)["row"] for x in capsys.readouterr().out.splitlines()] == [6, 7]


def test_tail_never_imports_aiohttp_or_trustme(day: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ot_hook", "tail", "--home", str(day),
         "--no-follow"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "sqlite3" in imported  # the import list was read at all
    assert not imported & {"aiohttp", "trustme", "cryptography"}


# Following in a subprocess ---------------------------------------------------------------


class TailProcess:
    """`ot-hook tail` in a subprocess, its stdout read line by line with a timeout."""

    def __init__(self, state: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "NO_COLOR")}
        self.process = subprocess.Popen(
            ot_hook_command("tail", "--home", str(state), *args), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: queue.Queue[str] = queue.Queue()
        self.pumps = [
            threading.Thread(target=_pump, args=(stream, sink), daemon=True)
            for stream, sink in ((self.process.stdout, self.lines),
                                 (self.process.stderr, self.errors))
        ]
        for pump in self.pumps:
            pump.start()

    async def next_json(self, timeout: float = LINE_TIMEOUT) -> dict[str, Any]:
        try:
            line = await asyncio.to_thread(self.lines.get, timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from tail in {timeout} s") from None
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    async def status(self, words: str, timeout: float = LINE_TIMEOUT) -> str:
        """Wait for a stderr line containing `words`."""
        while True:
            try:
                line = await asyncio.to_thread(self.errors.get, timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"tail never said {words!r}") from None
            if words in line:
                return line

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the exit code and everything left on stderr."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=10)
        return code, "".join(iter_queue(self.errors))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for pump in self.pumps:  # they end at end of file, now that the process has gone
            pump.join(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _pump(stream: Any, sink: queue.Queue[str]) -> None:
    for line in stream:
        sink.put(line)


def iter_queue(q: queue.Queue[str]) -> Iterator[str]:
    while True:
        try:
            yield q.get(timeout=0.5)
        except queue.Empty:
            return


@pytest.fixture
def tail_process() -> Iterator[list[TailProcess]]:
    started: list[TailProcess] = []
    yield started
    for process in started:
        process.close()


async def wait_ready(follower: TailProcess) -> None:
    """Until tail says it is following, a delivery might be neither old nor new to it."""
    await follower.status("following")


async def test_following_shows_each_delivery_as_it_arrives(
    receiver: Receiver, state: Path, tail_process: list[TailProcess]
) -> None:
    follower = TailProcess(state, "--json", "-n", "0")
    tail_process.append(follower)
    await wait_ready(follower)
    for event_id in range(10, 15):
        await post(receiver, sample(event_id, Description=INJECTION))
        line = await follower.next_json(timeout=5)  # one at a time: no buffering anywhere
        assert line["event"]["Id"] == event_id
        assert line["event"]["Description"] == INJECTION
        assert line["ActionTypeName"] == "Change Status"
    code, stderr = follower.interrupt()
    assert code == 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr


async def test_filters_apply_while_following(
    receiver: Receiver, state: Path, tail_process: list[TailProcess]
) -> None:
    follower = TailProcess(state, "-n", "0", "--status", "rejected", "--grep", "needle")
    tail_process.append(follower)
    await wait_ready(follower)
    await post(receiver, b"no needle here {")
    assert (await follower.next_json())["outcome"] == "rejected"
    await post(receiver, sample(20, Description="needle"))  # accepted: filtered out
    await post(receiver, b"another needle {")
    line = await follower.next_json()
    assert line["body"] == "another needle {"


async def test_a_store_that_appears_later_is_followed(
    state: Path, tail_process: list[TailProcess]
) -> None:
    follower = TailProcess(state)  # not even the state directory exists yet
    tail_process.append(follower)
    await follower.status("waiting")
    async with running(state) as receiver:
        await post(receiver, sample(30))
        assert (await follower.next_json())["event"]["Id"] == 30


async def test_an_empty_store_file_is_followed_until_serve_sets_it_up(
    state: Path, tail_process: list[TailProcess]
) -> None:
    state.mkdir(parents=True)
    (state / "events.db").touch()
    follower = TailProcess(state)
    tail_process.append(follower)
    assert "is empty" in await follower.status("waiting for 'ot-hook serve' to set it up")
    async with running(state) as receiver:
        await post(receiver, sample(31))
        assert (await follower.next_json())["event"]["Id"] == 31


async def test_following_survives_a_receiver_restart(
    state: Path, tail_process: list[TailProcess]
) -> None:
    async with running(state) as receiver:
        await post(receiver, sample(40))
        follower = TailProcess(state, "-n", "5")
        tail_process.append(follower)
        assert (await follower.next_json())["event"]["Id"] == 40
        await post(receiver, sample(41))
        assert (await follower.next_json())["event"]["Id"] == 41
    async with running(state) as receiver:  # a new process would do the same: new port too
        await post(receiver, sample(42))
        line = await follower.next_json()
        assert (line["row"], line["event"]["Id"]) == (3, 42)
    code, stderr = follower.interrupt()
    assert code == 130 and "Traceback" not in stderr


@pytest.mark.parametrize("removed", [("-wal", "-shm"), ("-wal",)])
async def test_following_goes_on_after_the_stores_log_is_removed(
    receiver: Receiver, state: Path, tail_process: list[TailProcess], removed: tuple[str, ...]
) -> None:
    """`rm events.db-wal events.db-shm` while serve and tail run: serve begins a new log,
    and tail, which read the old one, reads the new one (else it would show nothing more)."""
    follower = TailProcess(state, "--json", "-n", "0")
    tail_process.append(follower)
    await wait_ready(follower)
    await post(receiver, sample(60))
    assert (await follower.next_json())["event"]["Id"] == 60
    for suffix in removed:
        (state / f"events.db{suffix}").unlink()
    for event_id in (61, 62):
        await post(receiver, sample(event_id))
        assert (await follower.next_json())["event"]["Id"] == event_id


async def test_following_goes_on_after_a_backup_is_moved_in_place(
    receiver: Receiver, state: Path, tail_process: list[TailProcess]
) -> None:
    """A backup moved over events.db while serve and tail run: tail shows the backup's rows
    and then what serve stores in it, not the old store's rows read through its old log."""
    follower = TailProcess(state, "--json", "-n", "0")
    tail_process.append(follower)
    await wait_ready(follower)
    await post(receiver, sample(70))
    assert (await follower.next_json())["event"]["Id"] == 70
    backup = back_up(state)
    await post(receiver, sample(71))  # in the old store only
    assert (await follower.next_json())["event"]["Id"] == 71
    os.replace(backup, state / "events.db")
    await follower.status("replaced")
    assert (await follower.next_json())["event"]["Id"] == 70  # the backup's own row
    await post(receiver, sample(72))
    line = await follower.next_json()
    assert (line["row"], line["event"]["Id"]) == (3, 72)


async def test_a_closed_pipe_ends_tail_quietly(receiver: Receiver, state: Path) -> None:
    """`ot-hook tail | head -n 1`: once head has its line and goes, tail goes too, silently."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    follower = subprocess.Popen(ot_hook_command("tail", "--home", str(state), "-n", "0"),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-n", "1"], stdin=follower.stdout, stdout=subprocess.PIPE)
    assert follower.stdout is not None and follower.stderr is not None
    follower.stdout.close()  # only head reads it now
    try:
        await asyncio.sleep(1)  # tail starting up; deliveries before it are old to it anyway
        for event_id in range(50, 60):
            await post(receiver, sample(event_id))
            if follower.poll() is not None:
                break
            await asyncio.sleep(0.2)
        code = await asyncio.to_thread(follower.wait, LINE_TIMEOUT)
        first, _ = await asyncio.to_thread(head.communicate, timeout=LINE_TIMEOUT)
    finally:
        for process in (follower, head):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    assert json.loads(first)["event"]["Id"] >= 50
    assert code == 0
    stderr = follower.stderr.read().decode()
    follower.stderr.close()
    assert "following" in stderr and "Error" not in stderr and "Traceback" not in stderr


def test_the_library_follows_with_an_injected_terminal_and_stop(state: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    done = threading.Event()
    spec = tail.Follow(state / home.STORE, poll_interval=0.01, wait_interval=0.01)
    terminal = Terminal(stdout=out, stderr=err, stdout_isatty=False)
    thread = threading.Thread(target=tail.run, args=(spec, terminal), kwargs={"stop": done.is_set})
    thread.start()
    try:
        _fill(state, [sample(60), sample(61)])
        deadline = datetime.now(UTC) + timedelta(seconds=LINE_TIMEOUT)
        while out.getvalue().count("\n") < 2 and datetime.now(UTC) < deadline:
            threading.Event().wait(0.02)
    finally:
        done.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert [json.loads(x)["event"]["Id"] for x in out.getvalue().splitlines()] == [60, 61]
    assert "waiting" in err.getvalue()


@pytest.mark.parametrize("since", ["800000d", "9999999999d", "0001-01-01"])
def test_a_since_out_of_the_range_of_dates_is_a_usage_error(
    since: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ot_hook.cli import main

    assert main(["tail", "--home", str(tmp_path), "--no-follow", "--since", since]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ot-hook: error: --since: ") and err.count("\n") == 1


def test_an_empty_since_is_a_usage_error_not_no_filter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ot_hook.cli import main

    assert main(["tail", "--home", str(tmp_path), "--no-follow", "--since", ""]) == 2
    assert "cannot read ''" in capsys.readouterr().err


def test_a_following_tail_ends_when_its_reader_goes(tmp_path: Path) -> None:
    from ot_hook import store as store_module

    path = tmp_path / "home" / "events.db"
    path.parent.mkdir()
    store_module.open_for_writing(path).close()
    conn = sqlite3.connect(path)
    for n in range(3):
        conn.execute(
            "INSERT INTO deliveries (received_at, outcome, http_status, warnings, method, target,"
            " headers, body, body_size) VALUES ('2026-01-01T00:00:00.000000Z', 'rejected', 400,"
            " '[]', 'POST', '/', '[]', ?, 1)", (f"b{n}".encode(),))
    conn.commit()
    conn.close()
    command = " ".join(ot_hook_command("tail", "--home", str(path.parent), "-n", "3"))
    # head takes one line and goes; tail must notice without waiting for a new delivery.
    done = subprocess.run(["bash", "-c", f"{command} | head -n 1; echo ${{PIPESTATUS[0]}}"],
                          capture_output=True, text=True, timeout=20)
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["row"] == 1
    assert lines[1] == "0"


@pytest.mark.parametrize("command", [["tail", "--no-follow"], ["replay", "--dry-run"]])
def test_an_id_beyond_64_bits_is_a_usage_error(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from ot_hook.cli import main

    assert main([*command, "--home", str(tmp_path), "--id", str(2**64)]) == 2
    err = capsys.readouterr().err
    assert "beyond the 64-bit range" in err and err.count("\n") == 1


@pytest.mark.parametrize(("body_size", "said"), [
    (11, "(more than 10 bytes arrived; the first 10 were kept)"),  # reading stopped at the cap
    (5000, "(5000 bytes arrived; the first 10 were kept)"),
])
def test_verbose_says_how_much_of_a_cut_body_arrived(body_size: int, said: str) -> None:
    from dataclasses import replace

    from ot_hook import render
    from ot_hook.store import StoredDelivery

    delivery = StoredDelivery(
        row=1, received_at="2026-01-01T00:00:00.000000Z", outcome="rejected", http_status=413,
        reason="too large", warnings=[], duplicate_of=None, remote=None, method="POST",
        target="/", content_type=None, headers=[], body=b"0123456789", body_size=11,
        event_id=None, action_type=None, record_type=None, unique_id=None, description=None,
        username=None, action_date=None)
    text = render.details(replace(delivery, body_size=body_size)).plain
    assert text.rstrip().endswith(said)


def test_a_header_byte_that_was_not_utf8_reaches_the_screen_escaped() -> None:
    # aiohttp keeps such a byte as a lone surrogate; written out with surrogateescape it
    # would be the raw byte 0x9b, which terminals read as CSI (an escape sequence's start).
    from ot_hook.textsafe import printable

    shown = printable("a\udc9b31mred \x9b \x1b[2J \u202e")
    assert shown == "a\\udc9b31mred \\x9b \\x1b[2J \\u202e"
    assert shown.isascii()
