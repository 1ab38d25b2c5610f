"""A damaged store (a disk fault, a bad copy, a backup half restored): tail, replay and prune
say so in one line and exit 1, whichever read finds the damage, never with a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import io
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


def test_a_row_whose_json_is_damaged_is_a_store_error_too(
    healthy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Damage inside a value leaves SQLite's pages sound: the JSON of the row breaks."""
    state = _copy(healthy, tmp_path / "home")
    with contextlib.closing(sqlite3.connect(state / home.STORE)) as conn, conn:
        conn.execute("UPDATE deliveries SET headers = '[[\"Host\", \"1' "
                     "WHERE row = (SELECT MAX(row) FROM deliveries)")
    assert main(["tail", "--home", str(state), "--no-follow", "-n", "1"]) == 1
    assert "a damaged row" in _one_line_error(capsys.readouterr().err)
    assert main(["replay", "--home", str(state), "--dry-run", "--all"]) == 1
    assert "a damaged row" in _one_line_error(capsys.readouterr().err)


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
