"""`ot-hook prune`: old deliveries go, the rest stay, and a running receiver does not mind."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ot_hook import home
from ot_hook import prune as pruning
from ot_hook.cli import main
from ot_hook.serve import ForwardOptions, Receiver
from tests.support import ot_hook_command, post, running, sample, stored
from tests.test_forward import App, attempts, relay_rows, until, user_app

LONG_AGO = "2020-01-02T03:04:05.000000Z"


def fill(state: Path, count: int, *, aged: int = 0) -> None:
    """Store `count` deliveries through a real receiver; make the first `aged` of them old."""

    async def go() -> None:
        async with running(state) as receiver:
            for event_id in range(1, count + 1):
                await post(receiver, sample(event_id))

    asyncio.run(go())
    with contextlib.closing(sqlite3.connect(state / home.STORE)) as conn, conn:
        conn.execute("UPDATE deliveries SET received_at = ? WHERE row <= ?", (LONG_AGO, aged))


def test_older_than_deletes_only_old_deliveries_and_says_how_many(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(state, 4, aged=2)
    assert main(["prune", "--home", str(state), "--older-than", "30d"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Deleted 2 deliveries received before ")
    assert [row.row for row in stored(state)] == [3, 4]


def test_older_than_takes_a_time_too(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(state, 3, aged=1)
    assert main(["prune", "--home", str(state), "--older-than", "2020-01-03T00:00Z"]) == 0
    assert "Deleted 1 delivery " in capsys.readouterr().out
    assert [row.row for row in stored(state)] == [2, 3]


def test_deletes_in_batches(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(state, 7, aged=5)
    monkeypatch.setattr(pruning, "BATCH", 2)
    assert pruning.prune(state / home.STORE, None) == 7
    assert stored(state) == []


async def test_all_while_the_receiver_runs_and_row_numbers_go_on(
    receiver: Receiver, state: Path
) -> None:
    for event_id in (1, 2, 3):
        await post(receiver, sample(event_id))
    result = await asyncio.to_thread(
        subprocess.run, ot_hook_command("prune", "--home", str(state), "--all"),
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Deleted 3 deliveries from ")
    answer = await post(receiver, sample(1))  # accepted again: its first copy is gone
    assert answer.status == 200
    [row] = stored(state)
    assert (row.row, row.outcome) == (4, "accepted")  # a follower never sees a number twice


async def test_the_relay_rows_of_deleted_deliveries_go_with_them(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = {1: 503}  # so that one relay is tried twice
    app = App(answer=lambda n: answers.get(n, 200))
    async with user_app(app), running(state, forward=ForwardOptions(app.url)) as receiver:
        for event_id in (1, 2, 3):
            await post(receiver, sample(event_id, UniqueId=event_id))
        await until(lambda: [s for _, s, _ in relay_rows(state)] == ["delivered"] * 3)
    with contextlib.closing(sqlite3.connect(state / home.STORE)) as conn, conn:
        conn.execute("UPDATE deliveries SET received_at = ? WHERE row <= 2", (LONG_AGO,))
    monkeypatch.setattr(pruning, "BATCH", 1)  # each delivery and its relay rows: one batch
    assert pruning.prune(state / home.STORE, datetime.now(UTC) - timedelta(days=1)) == 2
    assert [row.row for row in stored(state)] == [3]
    assert relay_rows(state) == [(3, "delivered", 1)]
    assert [row for row, *_ in attempts(state)] == [3]


@pytest.mark.parametrize(
    "args", [[], ["--all", "--older-than", "1d"], ["--older-than", "soon"], ["--bogus"]]
)
def test_bad_flags_give_one_line_and_exit_2(
    state: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prune", "--home", str(state), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1


def test_an_empty_older_than_is_refused_and_deletes_nothing(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--older-than "$AGE"` with AGE unset must not mean "everything"."""
    fill(state, 2)
    assert main(["prune", "--home", str(state), "--older-than", ""]) == 2
    assert "cannot read ''" in capsys.readouterr().err
    assert len(stored(state)) == 2


@pytest.mark.parametrize("command", [["prune", "--all"], ["tail", "--no-follow"]])
def test_an_empty_home_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--home ''` would use the current directory; `--home .` is how to ask for that."""
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--home", ""]) == 2
    err = capsys.readouterr().err
    assert "--home" in err and "is empty" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_no_store_exits_1(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "--home", str(state), "--all"]) == 1
    assert "no store" in capsys.readouterr().err
    assert not state.exists()  # prune made nothing


def test_an_empty_store_file_is_named_and_left_as_it_is(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "events.db").touch()  # a copy made while serve ran, without its -wal
    assert main(["prune", "--all", "--home", str(state)]) == 1
    assert "is empty" in capsys.readouterr().err
    assert (state / "events.db").stat().st_size == 0


async def test_prune_keeps_deliveries_whose_relay_is_pending(state: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"  # nothing listens there
    async with running(state, forward=ForwardOptions(down, retries=50)) as receiver:
        for n in (1, 2):
            assert (await post(receiver, sample(n))).status == 200
    assert pruning.prune(state / home.STORE, None) == 0
    assert pruning.pending_kept(state / home.STORE, None) == 2
    assert [row.event_id for row in stored(state)] == [1, 2]
