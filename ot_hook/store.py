"""The durable store of deliveries: SQLite in WAL mode, one writer, many readers.

The receiver hands each delivery to `Store.save`, which a single writer thread commits together
with whatever else is waiting (group commit: one fsync for many deliveries) before the answer
goes out. Readers (`tail`, tests) open the file read-only and keep their transactions short so
that checkpoints can run.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ot_hook.events import AuditEvent

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")
Outcome = Literal["accepted", "duplicate", "rejected"]
OUTCOMES: tuple[Outcome, ...] = ("accepted", "duplicate", "rejected")

# Each entry brings a store from the version before it to its own; never edit a released one.
MIGRATIONS: dict[int, str] = {
    1: """
        CREATE TABLE deliveries (
            row           INTEGER PRIMARY KEY AUTOINCREMENT,
            received_at   TEXT NOT NULL,     -- UTC, ISO 8601 with microseconds and Z
            outcome       TEXT NOT NULL CHECK (outcome IN ('accepted', 'duplicate', 'rejected')),
            http_status   INTEGER NOT NULL,
            reason        TEXT,
            warnings      TEXT NOT NULL,     -- JSON array of strings
            duplicate_of  INTEGER,
            remote        TEXT,
            method        TEXT NOT NULL,
            target        TEXT NOT NULL,     -- path and query string as requested
            content_type  TEXT,
            headers       TEXT NOT NULL,     -- JSON array of [name, value], secrets left out
            body          BLOB NOT NULL,     -- the bytes as received (the first max-body bytes)
            body_size     INTEGER NOT NULL,  -- how many bytes arrived, also when truncated
            event_id      INTEGER,
            action_type   INTEGER,
            record_type   INTEGER,
            unique_id     TEXT,
            description   TEXT,
            username      TEXT,
            action_date   TEXT
        );
        -- Duplicates are found here, not in memory; the partial index keeps it small.
        CREATE INDEX deliveries_accepted_event_id ON deliveries (event_id)
            WHERE outcome = 'accepted';
        CREATE INDEX deliveries_received_at ON deliveries (received_at);
    """,
    # `tail --id` and `--unique-id` (the usual "what happened to SO 1877?") without a full
    # scan: about 0.8 s each on a million rows before, under 1 ms after. Only duplicates get a
    # new event_id index: accepted rows have one already, which the duplicate check relies on.
    2: """
        CREATE INDEX deliveries_duplicate_event_id ON deliveries (event_id)
            WHERE outcome = 'duplicate';
        CREATE INDEX deliveries_unique_id ON deliveries (unique_id);
    """,
    # serve --forward-to: what is still to relay survives a restart or a crash, and every
    # attempt's outcome is kept with the delivery it relayed.
    3: """
        CREATE TABLE relays (
            row         INTEGER PRIMARY KEY,  -- the delivery's row
            target      TEXT NOT NULL,        -- the URL it goes to
            record_key  TEXT NOT NULL,        -- RecordType:UniqueId, relayed in arrival order
            state       TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
            attempts    INTEGER NOT NULL DEFAULT 0,
            next_at     REAL NOT NULL DEFAULT 0  -- when to try again (Unix time)
        );
        CREATE INDEX relays_pending ON relays (row) WHERE state = 'pending';
        CREATE TABLE relay_attempts (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            row           INTEGER NOT NULL,   -- the delivery's row
            attempt       INTEGER NOT NULL,
            attempted_at  TEXT NOT NULL,      -- UTC, ISO 8601 with Z
            status        INTEGER,            -- the target's HTTP status, NULL when none came
            millis        REAL NOT NULL,
            error         TEXT,
            state         TEXT NOT NULL       -- the relay's state after this attempt
        );
        CREATE INDEX relay_attempts_row ON relay_attempts (row);
    """,
}
SCHEMA_VERSION = max(MIGRATIONS)


class StoreError(Exception):
    """The store cannot be opened or written; the message is one line for the user."""


class StoreUnavailable(StoreError):
    """A write failed (disk full, read-only file...): the receiver answers 503."""


@dataclass(frozen=True)
class Delivery:
    """One request on the delivery path, as the receiver saw it, ready to be stored."""

    received_at: str
    method: str
    target: str
    remote: str | None
    content_type: str | None
    headers: Sequence[tuple[str, str]]
    body: bytes
    body_size: int
    http_status: int
    event: AuditEvent | None = None  # None means rejected
    reason: str | None = None
    warnings: Sequence[str] = ()
    relay_to: str | None = None  # serve --forward-to: queue it for relaying in the same commit


@dataclass(frozen=True)
class Saved:
    row: int
    outcome: Outcome
    duplicate_of: int | None


@dataclass(frozen=True)
class StoredDelivery:
    """A row of the store, as readers see it."""

    row: int
    received_at: str
    outcome: Outcome
    http_status: int
    reason: str | None
    warnings: list[str]
    duplicate_of: int | None
    remote: str | None
    method: str
    target: str
    content_type: str | None
    headers: list[tuple[str, str]]
    body: bytes
    body_size: int
    event_id: int | None
    action_type: int | None
    record_type: int | None
    unique_id: str | None
    description: str | None
    username: str | None
    action_date: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> StoredDelivery:
        values = dict(row)
        values["warnings"] = json.loads(values["warnings"])
        values["headers"] = [tuple(pair) for pair in json.loads(values["headers"])]
        return cls(**values)


COLUMNS = ", ".join(f.name for f in StoredDelivery.__dataclass_fields__.values())


def create_private_file(path: Path) -> None:
    """Make sure `path` exists with mode 0600 before anything else writes to it."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    with contextlib.suppress(OSError):  # a file owned by another user keeps its mode
        os.chmod(path, 0o600)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer ot-hook (store version {version}, "
            f"this one knows {SCHEMA_VERSION}); upgrade ot-hook"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        # One script, one transaction: a crash mid-migration leaves the old version intact.
        conn.executescript(
            f"BEGIN IMMEDIATE; {MIGRATIONS[target]}; PRAGMA user_version = {target}; COMMIT;"
        )


def open_for_writing(path: Path, *, max_pages: int | None = None) -> sqlite3.Connection:
    """A connection that may write: WAL, synchronous=FULL, schema brought up to date."""
    try:
        create_private_file(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit survives power loss too, not only a crash of this process.
        conn.execute("PRAGMA synchronous = FULL")
        if max_pages is not None:
            conn.execute(f"PRAGMA max_page_count = {int(max_pages)}")
        _migrate(conn, path)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store {path}: {exc}") from None
    except OSError as exc:
        raise StoreError(f"cannot open the store {path}: {exc.strerror}") from None
    return conn


def open_for_reading(path: Path) -> sqlite3.Connection:
    """A read-only connection; each query is its own short transaction."""
    if not path.exists():
        raise StoreError(f"no store at {path} yet")
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
            check_same_thread=False,
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the store {path}: {exc}") from None
    if version == 0:
        raise StoreError(f"the store {path} is not set up yet")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer ot-hook; upgrade ot-hook")
    return conn


@dataclass
class _Pending:
    delivery: Delivery
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Saved]


@dataclass
class _Job:
    """Other writes (relay outcomes) go through the same single writer."""

    work: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


@dataclass
class Store:
    """The writing side of the store, shared by every request of one receiver."""

    path: Path
    max_pages: int | None = None
    max_batch: int = 1000
    _conn: sqlite3.Connection | None = field(default=None, init=False, repr=False)
    _queue: queue.SimpleQueue[_Pending | _Job | None] = field(
        default_factory=queue.SimpleQueue, init=False, repr=False
    )
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _identity: tuple[int, int] | None = field(default=None, init=False, repr=False)
    on_replaced: Callable[[str], None] | None = field(default=None, repr=False)

    def open(self) -> None:
        self._connect()
        self._thread = threading.Thread(target=self._run, name="ot-hook-store", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write everything queued so far, then stop the writer and close the file."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def save(self, delivery: Delivery) -> Saved:
        """Commit `delivery` durably and say how it was stored; raises `StoreUnavailable`."""
        if self._thread is None:
            raise StoreUnavailable("the store is closed")
        import asyncio  # here: tail and prune read the store without an event loop

        loop = asyncio.get_running_loop()
        future: asyncio.Future[Saved] = loop.create_future()
        self._queue.put(_Pending(delivery, loop, future))
        return await future

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the writer's connection in a transaction of its own, off the loop."""
        if self._thread is None:
            raise StoreUnavailable("the store is closed")
        import asyncio

        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(work, loop, future))
        return await future

    # The writer thread: take everything waiting, commit it in one transaction, answer each.
    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < self.max_batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [item for item in items if isinstance(item, _Pending)]
            if batch:
                results = self._guarded(self._write, [p.delivery for p in batch])
                # One wake-up of the event loop per batch, not one per delivery.
                batch[0].loop.call_soon_threadsafe(_settle, batch, results)
            for job in items:
                if isinstance(job, _Job):
                    result = self._guarded(self._transaction, job.work)
                    job.loop.call_soon_threadsafe(_settle_job, job.future, result)
            if None in items:
                return

    def _guarded(self, write: Callable[[Any], Any], argument: Any) -> Any:
        """The result of `write`, or the StoreUnavailable that a failed write becomes."""
        try:
            return write(argument)
        except sqlite3.Error as exc:
            return StoreUnavailable(f"cannot write the store {self.path}: {exc}")
        except Exception as exc:  # a bug must not kill the writer and hang every request
            return StoreUnavailable(f"cannot write the store {self.path}: {exc!r}")

    def _write(self, deliveries: list[Delivery]) -> list[Saved]:
        """Insert `deliveries` in one transaction: one fsync for the whole batch."""

        def insert(conn: sqlite3.Connection) -> list[Saved]:
            saved, rows = _plan(conn, deliveries)
            conn.executemany(_INSERT, rows)
            relays = [
                (s.row, d.relay_to, _record_key(d))
                for s, d in zip(saved, deliveries, strict=True)
                if d.relay_to is not None and s.outcome != "rejected"
            ]
            if relays:
                conn.executemany(
                    "INSERT INTO relays (row, target, record_key, state) "
                    "VALUES (?, ?, ?, 'pending')", relays,
                )
            return saved

        return self._transaction(insert)

    def _connect(self) -> None:
        self._conn = open_for_writing(self.path, max_pages=self.max_pages)
        self._identity = file_identity(self.path)

    def _reconnect_if_replaced(self) -> None:
        """Someone removed or replaced events.db while we run: writing on to the old file
        would answer 200 for deliveries nobody can read. Start a new store instead."""
        if file_identity(self.path) == self._identity:
            return
        if self._conn is not None:
            self._conn.close()
        self._connect()
        if self.on_replaced is not None:
            self.on_replaced(f"{self.path} was removed or replaced: writing to a new store")

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        self._reconnect_if_replaced()
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return result


def file_identity(path: Path) -> tuple[int, int] | None:
    """Which file `path` is now (device, inode), or None when there is none: tells a store
    removed or replaced under a running reader or writer."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _record_key(d: Delivery) -> str:
    """Relays of one record (RecordType and UniqueId together) keep their arrival order."""
    assert d.event is not None
    return f"{d.event.record_type}:{d.event.unique_id}"


def _settle_job(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():
        return
    if isinstance(result, StoreUnavailable):
        future.set_exception(result)
    else:
        future.set_result(result)


def _settle(batch: list[_Pending], results: list[Saved] | StoreUnavailable) -> None:
    for index, pending in enumerate(batch):
        if pending.future.done():  # the request went away; the row is stored all the same
            continue
        if isinstance(results, Exception):
            pending.future.set_exception(results)
        else:
            pending.future.set_result(results[index])


_INSERT = """
    INSERT INTO deliveries (row, received_at, outcome, http_status, reason, warnings,
        duplicate_of, remote, method, target, content_type, headers, body, body_size,
        event_id, action_type, record_type, unique_id, description, username, action_date)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def first_accepted_sql(count: int) -> str:
    """The first accepted row of each of `count` event Ids (through the partial index)."""
    return (
        "SELECT event_id, MIN(row) FROM deliveries WHERE outcome = 'accepted' AND "
        f"event_id IN ({','.join('?' * count)}) GROUP BY event_id"
    )


def _plan(
    conn: sqlite3.Connection, deliveries: list[Delivery]
) -> tuple[list[Saved], list[tuple[Any, ...]]]:
    """Decide each delivery's row number and outcome with two queries for the whole batch.

    Rows are numbered here (the writer is the only one inserting) so that a duplicate of a
    delivery earlier in the same batch can name its row before anything is inserted.
    """
    ids = sorted({d.event.id for d in deliveries if d.event is not None})
    first_accepted: dict[int, int] = {}
    for chunk in range(0, len(ids), 500):  # stay well under SQLite's variable limit
        part = ids[chunk : chunk + 500]
        first_accepted.update(conn.execute(first_accepted_sql(len(part)), part).fetchall())
    # AUTOINCREMENT's counter never goes back, even after prune: a row number means one delivery.
    (last,) = conn.execute(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'), 0)"
    ).fetchone()
    saved: list[Saved] = []
    rows: list[tuple[Any, ...]] = []
    for row, d in enumerate(deliveries, start=last + 1):
        event = d.event
        outcome: Outcome = "rejected"
        duplicate_of: int | None = None
        if event is not None:
            duplicate_of = first_accepted.get(event.id)
            outcome = "accepted" if duplicate_of is None else "duplicate"
            if duplicate_of is None:
                first_accepted[event.id] = row
        saved.append(Saved(row, outcome, duplicate_of))
        rows.append((
            row, d.received_at, outcome, d.http_status, _utf8(d.reason),
            json.dumps(list(d.warnings)), duplicate_of, _utf8(d.remote), d.method,
            _utf8(d.target), _utf8(d.content_type), json.dumps(d.headers), d.body, d.body_size,
            event.id if event else None,
            event.action_type if event else None,
            event.record_type if event else None,
            _utf8(str(event.unique_id)) if event else None,
            _utf8(event.description) if event else None,
            _utf8(event.username) if event else None,
            _utf8(event.action_date) if event else None,
        ))
    return saved, rows


def _utf8(text: str | None) -> str | None:
    """Text SQLite can keep: JSON escapes can carry unpaired surrogates (\\ud800), which UTF-8
    cannot encode; they are kept as visible escapes (the raw body keeps the original)."""
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def read_rows(
    conn: sqlite3.Connection, where: str = "", params: Sequence[Any] = (), *,
    order: str = "row", limit: int | None = None,
) -> list[StoredDelivery]:
    """Rows matching a SQL condition, fetched at once so the read transaction ends here."""
    sql = f"SELECT {COLUMNS} FROM deliveries"
    if where:
        sql += f" WHERE {where}"
    sql += f" ORDER BY {order}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [StoredDelivery.from_row(r) for r in conn.execute(sql, tuple(params)).fetchall()]


def iter_all(path: Path) -> Iterator[StoredDelivery]:
    """Every stored delivery in arrival order (for tests and small stores)."""
    conn = open_for_reading(path)
    try:
        yield from read_rows(conn)
    finally:
        conn.close()
