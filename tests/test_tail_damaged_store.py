"""A damaged store (a disk fault, a bad copy, a backup half restored): tail, replay and prune
say so in one line and exit 1, whichever read finds the damage, never with a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from ot_hook import home, replay, store, tail
from ot_hook import prune as pruning
from ot_hook.cli import main
from ot_hook.terminal import Terminal
from tests.support import post, post_sync, running, running_in_thread, sample

MALFORMED = "database disk image is malformed"


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("ot-hook: error: ")
    return line


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real store with enough rows that its middle is deliveries' pages only: a few
    deliveries from a real receiver, copied until there are 2048 of them."""
    state = tmp_path_factory.mktemp("healthy") / "home"
    with running_in_thread(state) as receiver:
        for event_id in range(1, 5):
            assert post_sync(receiver, sample(event_id, Description="x" * 300))[0] == 200
    columns = ", ".join(c for c in store.COLUMNS.split(", ") if c != "row")
    with contextlib.closing(sqlite3.connect(state / home.STORE)) as conn:
        for _ in range(9):  # 4 * 2**9 rows
            conn.execute(f"INSERT INTO deliveries ({columns}) SELECT {columns} FROM deliveries")
            conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return state


def _copy(healthy: Path, to: Path) -> Path:
    shutil.copytree(healthy, to)
    for name in ("-wal", "-shm"):  # a checkpointed store is whole without them
        (to / f"{home.STORE}{name}").unlink(missing_ok=True)
    return to


def _garble_the_middle(path: Path) -> None:
    """Overwrite the middle third of the file: the header, the schema and the last pages
    (what `tail -n 1` reads) stay, so the store opens and the damage is found by a scan.
    With 0xff, not random bytes: each page in the middle is then surely no page at all,
    where random bytes may look like an empty one and end a scan early without a word."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 3)
        f.write(b"\xff" * (size // 3))


@pytest.fixture
def damaged(healthy: Path, tmp_path: Path) -> Path:
    state = _copy(healthy, tmp_path / "home")
    _garble_the_middle(state / home.STORE)
    return state


def test_the_damage_is_there_and_only_a_scan_finds_it(damaged: Path) -> None:
    conn = store.open_for_reading(damaged / home.STORE)  # opens: header and schema are fine
    try:
        assert store.read_rows(conn, order="row DESC", limit=1)  # the last rows read well
        with pytest.raises(sqlite3.DatabaseError, match=MALFORMED):
            store.read_rows(conn, "action_type = 9999")
    finally:
        conn.close()


@pytest.mark.parametrize(
    "args",
    [
        ["--action", "9999"],
        ["--grep", "no such text"],
        ["--record", "sales order", "-n", "100000"],
        ["--since", "30d", "-n", "100000"],
        ["-n", "100000"],
    ],
)
def test_tail_filters_over_a_damaged_store_say_so_in_one_line(
    damaged: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert main(["tail", "--home", str(damaged), "--no-follow", *args]) == 1
    assert _one_line_error(capsys.readouterr().err) == (
        f"ot-hook: error: cannot read the store {damaged / home.STORE}: {MALFORMED}"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--all"],
        ["--action", "9999"],
        ["--status", "accepted", "--since", "30d"],
    ],
)
def test_replay_selection_over_a_damaged_store_says_so_in_one_line(
    damaged: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert main(["replay", "--home", str(damaged), "--dry-run", *args]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_line_error(err) == (
        f"ot-hook: error: cannot read the store {damaged / home.STORE}: {MALFORMED}"
    )


def test_prune_over_a_damaged_store_says_so_in_one_line(
    damaged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prune", "--home", str(damaged), "--older-than", "30d"]) == 1
    assert MALFORMED in _one_line_error(capsys.readouterr().err)


def test_prunes_count_of_kept_deliveries_over_a_damaged_store_is_a_store_error(
    damaged: Path,
) -> None:
    with pytest.raises(store.StoreError, match=MALFORMED):
        pruning.pending_kept(damaged / home.STORE, None)


def test_a_row_edited_out_of_shape_is_shown_with_what_is_wrong(
    healthy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Damage inside a value (an edit in the sqlite3 shell) leaves SQLite's pages sound: the
    row is shown as far as it can be read, its warnings say what is wrong, and the other
    rows are read as ever."""
    state = _copy(healthy, tmp_path / "home")
    with contextlib.closing(sqlite3.connect(state / home.STORE)) as conn, conn:
        last = "(SELECT MAX(row) FROM deliveries)"
        conn.execute(f"UPDATE deliveries SET headers = '[[\"Host\", \"1', warnings = 'x', "
                     f"body = CAST(body AS TEXT), description = CAST('d' AS BLOB) "
                     f"WHERE row = {last}")
        conn.execute(f"UPDATE deliveries SET body = 42 WHERE row = {last} - 1")
    assert main(["tail", "--home", str(state), "--no-follow", "-n", "2", "--json", "-v"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    number, edited = [json.loads(line) for line in captured.out.splitlines()]
    assert number["body"] == "42"
    assert edited["event"]["Id"] == 4 and edited["headers"] == []
    assert any("headers column is not a JSON array" in w for w in edited["warnings"])
    assert any("warnings column is not a JSON array" in w for w in edited["warnings"])
    assert main(["replay", "--home", str(state), "--dry-run", "--all"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_following_tail_that_finds_the_store_replaced_by_a_damaged_one_stops_with_one_error(
    healthy: Path, tmp_path: Path,
) -> None:
    """A half-restored backup put in place of the store while tail follows: the store
    opens, and reading it from the start (as for any new store) meets the damage."""
    state = _copy(healthy, tmp_path / "home")
    path = state / home.STORE
    garbled = tmp_path / "garbled.db"
    shutil.copy(path, garbled)
    _garble_the_middle(garbled)
    statuses: list[str] = []
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if garbled.exists():  # the first look while following: put it in place
            garbled.replace(path)

    spec = tail.Follow(path, tail.Filters(actions=(9999,)), last=1, recheck_interval=0)
    shown = tail.deliveries(spec, status=statuses.append, sleep=sleep,
                            stop=lambda: len(sleeps) > 50)
    with pytest.raises(store.StoreError, match=f"cannot read the store {path}: {MALFORMED}"):
        list(shown)
    assert any("replaced" in line for line in statuses)


def test_a_following_tail_over_a_damaged_store_fails_before_it_follows(damaged: Path) -> None:
    """The backlog's scan finds the damage; nothing is shown and it does not wait on."""
    out = io.StringIO()
    terminal = Terminal(stdout=out, stderr=io.StringIO(), stdout_isatty=False)
    with pytest.raises(store.StoreError, match=MALFORMED):
        tail.run(tail.Follow(damaged / home.STORE, tail.Filters(grep="zzz")), terminal)
    assert out.getvalue() == ""


def test_replay_selected_turns_a_damaged_store_into_a_replay_error(damaged: Path) -> None:
    selection = replay.Selection(tail.Filters(), everything=True)
    with pytest.raises(replay.ReplayError, match=MALFORMED):
        list(replay.selected(damaged / home.STORE, selection))


def test_recording_a_replay_in_a_store_that_cannot_take_it_is_a_store_error(
    healthy: Path, tmp_path: Path
) -> None:
    state = _copy(healthy, tmp_path / "home")
    with contextlib.closing(sqlite3.connect(state / home.STORE)) as conn, conn:
        conn.execute("DROP TABLE relay_attempts")  # the schema says it is there
        conn.execute("INSERT INTO relays VALUES (1, 'http://app/', '7:890', 'failed', 1, 0)")
    with pytest.raises(store.StoreError, match=r"cannot record the replay.*relay_attempts"):
        replay.mark_relayed(state / home.STORE, {1: 200}, "http://app/")


async def test_serve_on_a_damaged_store_says_so_and_still_takes_deliveries(
    damaged: Path,
) -> None:
    err = io.StringIO()
    async with running(damaged, stderr=err) as receiver:
        assert (await post(receiver, sample(9001))).status == 200
        assert receiver.store_check is not None  # it runs beside the receiver
        await asyncio.to_thread(receiver.store_check.join, 30)
    assert f"WARNING: the store {damaged / home.STORE} is damaged" in err.getvalue()


async def test_serve_on_a_whole_store_says_nothing_of_damage(healthy: Path, tmp_path: Path) -> None:
    state = _copy(healthy, tmp_path / "home")
    err = io.StringIO()
    async with running(state, stderr=err) as receiver:
        assert (await post(receiver, sample(9001))).status == 200
        assert receiver.store_check is not None
        await asyncio.to_thread(receiver.store_check.join, 30)
        assert not receiver.store_check.is_alive()
    assert "damaged" not in err.getvalue()


@pytest.mark.parametrize("nonsense", ["'abc'", "x'00'", "2.5"])
def test_a_counter_edited_into_nonsense_stops_no_reader(
    healthy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], nonsense: str
) -> None:
    state = _copy(healthy, tmp_path / "home")
    with contextlib.closing(sqlite3.connect(state / home.STORE)) as conn, conn:
        conn.execute(f"UPDATE sqlite_sequence SET seq = {nonsense}")
        conn.execute(f"INSERT INTO sqlite_sequence (name, seq) VALUES "
                     f"('relay_attempts', {nonsense})")
    assert main(["tail", "--home", str(state), "--no-follow", "-n", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert json.loads(captured.out)["row"] == 2048
