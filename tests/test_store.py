"""The store on its own: schema versions, migration in place, group commit, readers."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import stat
from pathlib import Path

import pytest

from ot_hook import store, writer
from tests.support import sample


def delivery(event_id: int | None) -> store.Delivery:
    """A valid delivery of `event_id`, or (None) one that is not JSON."""
    body = sample(event_id) if event_id is not None else b"not JSON"
    return store.Delivery("2026-01-01T00:00:00.000000Z", "POST", "/", "127.0.0.1", None, [],
                          body, len(body))


def make_store_at_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    for step in range(1, version + 1):
        conn.executescript(store.MIGRATIONS[step])
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("version", range(1, store.SCHEMA_VERSION + 1))
def test_an_older_store_is_migrated_in_place(tmp_path: Path, version: int) -> None:
    path = tmp_path / "events.db"
    make_store_at_version(path, version)
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO deliveries (received_at, outcome, http_status, warnings, method, target,"
        " headers, body, body_size) VALUES ('t', 'rejected', 400, '[]', 'POST', '/', '[]',"
        " x'00', 1)"
    )
    conn.commit()
    conn.close()
    writer = store.open_for_writing(path)
    assert writer.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    writer.close()
    [row] = store.iter_all(path)
    assert row.body == b"\x00"


def test_a_store_from_a_newer_ot_hook_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    make_store_at_version(path, store.SCHEMA_VERSION)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(store.StoreError, match="newer ot-hook"):
        store.open_for_writing(path)


def test_an_sqlite_file_of_another_program_is_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for open_it in (store.open_for_writing, store.open_for_reading):
        with pytest.raises(store.StoreError, match=r"ot-hook did not make .*tables orders"):
            open_it(path)
    assert path.read_bytes() == before  # no tables of ours were added beside its own


def test_the_store_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    conn = store.open_for_writing(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_concurrent_saves_share_transactions_and_find_duplicates(tmp_path: Path) -> None:
    receiving = writer.Store(tmp_path / "events.db")
    receiving.open()
    try:
        ids = [n % 50 for n in range(200)] + [None] * 10
        saved = await asyncio.gather(*(receiving.save(delivery(i)) for i in ids))
    finally:
        receiving.close()
    outcomes = [s.outcome for s in saved]
    assert outcomes.count("accepted") == 50
    assert outcomes.count("duplicate") == 150
    assert outcomes.count("rejected") == 10
    rows = list(store.iter_all(tmp_path / "events.db"))
    assert [r.row for r in rows] == sorted(s.row for s in saved)
    first_row = {r.event_id: r.row for r in reversed(rows) if r.outcome == "accepted"}
    for r in rows:
        if r.outcome == "duplicate":
            assert r.duplicate_of == first_row[r.event_id]


def test_duplicates_use_the_index_not_a_scan(tmp_path: Path) -> None:
    conn = store.open_for_writing(tmp_path / "events.db")
    plan = conn.execute(
        "EXPLAIN QUERY PLAN " + store.first_accepted_sql(3), (1, 2, 3)
    ).fetchall()
    conn.close()
    assert "deliveries_accepted_event_id" in " ".join(str(step) for step in plan)


async def test_save_after_close_is_unavailable(tmp_path: Path) -> None:
    receiving = writer.Store(tmp_path / "events.db")
    receiving.open()
    receiving.close()
    with pytest.raises(store.StoreUnavailable):
        await receiving.save(delivery(1))


def commit_ids(to: store.Writer, numbering: writer.Numbering,
               ids: list[int]) -> list[tuple[int, str, int | None]]:
    """Commit deliveries of `ids` as the writer process does; (row, outcome, duplicate_of)."""
    _, saved, error, _ = writer.commit(to, [writer.row_of(delivery(i)) for i in ids], numbering)
    assert error is None and saved is not None, error
    return [(row, outcome, duplicate_of) for row, outcome, duplicate_of, *_ in saved]


def test_the_writer_counts_on_nothing_another_connection_changed(tmp_path: Path) -> None:
    # The writer keeps its last row number and highest accepted Id between transactions:
    # a row another connection adds, or prune removes, must still be taken into account.
    path = tmp_path / "events.db"
    to, numbering = store.Writer(path), writer.Numbering()
    assert commit_ids(to, numbering, [5, 5]) == [(1, "accepted", None), (2, "duplicate", 1)]
    other = sqlite3.connect(path)
    other.execute(
        "INSERT INTO deliveries (received_at, outcome, http_status, warnings, method, target,"
        " headers, body, body_size, event_id) VALUES ('t', 'accepted', 200, '[]', 'POST', '/',"
        " '[]', x'00', 1, 9)"
    )
    other.commit()
    assert commit_ids(to, numbering, [9, 10, 5]) == [
        (4, "duplicate", 3), (5, "accepted", None), (6, "duplicate", 1)]
    other.execute("DELETE FROM deliveries WHERE row <= 5")  # as prune does
    other.commit()
    other.close()
    # Row numbers never go back; an Id whose accepted row is gone is accepted again.
    assert commit_ids(to, numbering, [10, 11]) == [(7, "accepted", None), (8, "accepted", None)]
    to.close()


def test_the_writer_counts_on_nothing_a_failed_commit_wrote(tmp_path: Path) -> None:
    # The rows are numbered before COMMIT; when COMMIT fails (here the file may not grow:
    # the log cannot take the pages), the next batch takes the same numbers again.
    resource = pytest.importorskip("resource")  # POSIX only
    path = tmp_path / "events.db"
    to, numbering = store.Writer(path), writer.Numbering()
    assert commit_ids(to, numbering, [1]) == [(1, "accepted", None)]
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (Path(f"{path}-wal").stat().st_size, limit[1]))
    try:
        _, saved, error, _ = writer.commit(to, [writer.row_of(delivery(2))] * 50, numbering)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, ignored)
    assert saved is None and error is not None
    assert commit_ids(to, numbering, [2, 1]) == [(2, "accepted", None), (3, "duplicate", 1)]
    to.close()


def test_a_large_batch_is_stored_whole_and_in_order(tmp_path: Path) -> None:
    # Rows go in with one INSERT per 50: a batch of 120 crosses two of those boundaries.
    path = tmp_path / "events.db"
    to = store.Writer(path)
    ids = list(range(1, 121))
    assert commit_ids(to, writer.Numbering(), ids) == [(n, "accepted", None) for n in ids]
    to.close()
    assert [(r.row, r.event_id) for r in store.iter_all(path)] == list(zip(ids, ids, strict=True))


def insert_by_hand(path: Path, sql: str) -> None:
    """What a user editing the store with the sqlite3 shell does, serve running."""
    conn = sqlite3.connect(path)
    conn.execute(sql)
    conn.commit()
    conn.close()


def test_an_accepted_row_edited_to_a_text_id_stops_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    to, numbering = store.Writer(path), writer.Numbering()
    assert commit_ids(to, numbering, [5]) == [(1, "accepted", None)]
    insert_by_hand(path, "UPDATE deliveries SET event_id = 'abc' WHERE row = 1")
    insert_by_hand(path, "INSERT INTO deliveries (received_at, outcome, http_status, warnings,"
                         " method, target, headers, body, body_size, event_id) VALUES"
                         " ('t', 'accepted', 200, '[]', 'POST', '/', '[]', x'00', 1, 7)")
    # Every Id is looked up now (the highest "Id" is text): 7 still finds its row.
    assert commit_ids(to, numbering, [5, 7, 8]) == [
        (3, "accepted", None), (4, "duplicate", 2), (5, "accepted", None)]
    to.close()


def test_rows_are_numbered_past_the_highest_even_with_the_counter_edited(
        tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    to, numbering = store.Writer(path), writer.Numbering()
    assert commit_ids(to, numbering, [1, 2, 3]) == [(n, "accepted", None) for n in (1, 2, 3)]
    insert_by_hand(path, "DELETE FROM sqlite_sequence")
    assert commit_ids(to, numbering, [4]) == [(4, "accepted", None)]
    insert_by_hand(path, "UPDATE sqlite_sequence SET seq = 1")
    assert commit_ids(to, numbering, [5]) == [(5, "accepted", None)]
    for row, nonsense in enumerate(("'abc'", "6.5", "NULL"), start=6):  # not row numbers
        insert_by_hand(path, f"UPDATE sqlite_sequence SET seq = {nonsense}")
        assert commit_ids(to, numbering, [row]) == [(row, "accepted", None)]
    to.close()


def test_a_file_put_in_place_of_the_store_takes_no_row_number_again(tmp_path: Path) -> None:
    # Answers already named rows 1-3: the deliveries that follow a swap get 4 and on, so a
    # row number means one delivery for as long as this writer runs.
    path = tmp_path / "events.db"
    to, numbering = store.Writer(path), writer.Numbering()
    assert commit_ids(to, numbering, [1, 2, 3]) == [(n, "accepted", None) for n in (1, 2, 3)]
    empty = tmp_path / "other.db"
    store.open_for_writing(empty).close()
    empty.replace(path)
    assert commit_ids(to, numbering, [1, 9]) == [(4, "accepted", None), (5, "accepted", None)]
    to.close()


def test_the_writer_inbox_gives_every_row_in_order_across_batches() -> None:
    """Frames that come together make one batch; nothing is lost or reordered when the
    receiver closes its end."""
    import socket

    ours, theirs = socket.socketpair()
    with ours, theirs:
        inbox = writer._Inbox(theirs)
        ours.sendall(b"".join(writer.frame([(n,)]) for n in range(10)))
        batches = inbox.batches(max_batch=1000)
        assert next(batches) == [(n,) for n in range(10)]
        ours.sendall(writer.frame([(10,)]) + writer.frame([(11,)]))
        ours.shutdown(socket.SHUT_WR)
        assert [row for batch in batches for row in batch] == [(10,), (11,)]
