"""The durable store of deliveries: SQLite in WAL mode, one writer, many readers.

This module knows the file: its schema and migrations, how to open it for writing or reading,
and the rows it holds. The receiver writes through `ot_hook.writer.Store` (one writer process,
group commit); readers (`tail`, tests) open the file read-only and keep their transactions short
so that checkpoints can run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from ot_hook.events import EventKey
from ot_hook.textsafe import printable

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


class StoreNotSetUp(StoreError):
    """The file is there but holds nothing yet: serve is making it, or it is a copy of a
    store that serve was writing, made without its -wal file."""


class StoreUnavailable(StoreError):
    """A write failed (disk full, read-only file...): the receiver answers 503."""


# Not frozen: on the delivery path a frozen dataclass costs about 2 us more per instance.
@dataclass(slots=True)
class Delivery:
    """One request on the delivery path, as the receiver saw it. The writer parses and
    validates the body, and stores it with its outcome."""

    received_at: str
    method: str
    target: str
    remote: str | None
    content_type: str | None
    headers: Sequence[tuple[str, str]]
    body: bytes
    body_size: int
    status: int = 200  # the answer to a valid delivery (serve --status-code)
    refused: tuple[int, str] | None = None  # the receiver's own refusal: 413, 408, 400
    relay_to: str | None = None  # serve --forward-to: queue it for relaying in the same commit


@dataclass(slots=True)
class Saved:
    """How a delivery was stored, and so how to answer it."""

    row: int
    outcome: Outcome
    duplicate_of: int | None
    http_status: int = 200
    reason: str | None = None  # why it was rejected
    event: EventKey | None = None  # None when rejected


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
        """A row as serve wrote it, or as far as it can be read after an edit by hand (the
        sqlite3 shell): what cannot be is named in its warnings, so that one edited row
        stops no reader of the rest."""
        values = dict(row)
        problems: list[str] = []
        warnings = _edited_json(values["warnings"], "warnings", problems)
        headers = _edited_json(values["headers"], "headers", problems)
        values["warnings"] = [str(w) for w in warnings] + problems
        values["headers"] = [(str(pair[0]), str(pair[1])) for pair in headers
                             if isinstance(pair, list) and len(pair) == 2]
        for name, value in values.items():
            if isinstance(value, bytes) and name != "body":  # text edited into a blob
                values[name] = value.decode("utf-8", "replace")
        if not isinstance(values["body"], bytes):  # a blob edited into text or a number
            values["body"] = str(values["body"]).encode("utf-8", "surrogatepass")
        return cls(**values)


def _edited_json(text: Any, column: str, problems: list[str]) -> list[Any]:
    """A column that holds a JSON array, or [] with the reason in `problems`."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        value = None
    if isinstance(value, list):
        return value
    problems.append(f"the row's {column} column is not a JSON array (edited by hand?): "
                    f"{printable(str(text))[:80]}")
    return []


COLUMNS = ", ".join(f.name for f in StoredDelivery.__dataclass_fields__.values())


def create_private_file(path: Path) -> None:
    """Make sure `path` exists with mode 0600 before anything else writes to it."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    with contextlib.suppress(OSError):  # a file owned by another user keeps its mode
        os.chmod(path, 0o600)


def _refuse_foreign(conn: sqlite3.Connection, path: Path) -> None:
    """An SQLite file that ot-hook did not make (no store version, but tables) is neither
    read as a store nor given ot-hook's tables beside its own."""
    tables = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name LIMIT 4")]
    if tables:
        named = ", ".join(printable(name) for name in tables[:3])
        more = ", ..." if len(tables) > 3 else ""
        raise StoreError(f"{path} is an SQLite file that ot-hook did not make (it has the "
                         f"tables {named}{more}); move it aside, or use another --home")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer ot-hook (store version {version}, "
            f"this one knows {SCHEMA_VERSION}); upgrade ot-hook"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        # One script, one transaction: a crash mid-migration leaves the old version intact.
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE; {MIGRATIONS[target]}; PRAGMA user_version = {target}; COMMIT;"
            )
        except sqlite3.OperationalError:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # serve's two writers may set up a new file at once: the other one did this step.
            if conn.execute("PRAGMA user_version").fetchone()[0] < target:
                raise


def remove_orphaned_wal(path: Path) -> None:
    """With the store file gone, its -wal and -shm belong to nothing: SQLite would try to
    apply the old log to the new, empty file and answer "disk I/O error" from then on."""
    if path.exists():
        return
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def open_for_writing(path: Path, *, max_pages: int | None = None) -> sqlite3.Connection:
    """A connection that may write: WAL, synchronous=FULL, schema brought up to date."""
    conn: sqlite3.Connection | None = None
    try:
        remove_orphaned_wal(path)
        create_private_file(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            _refuse_foreign(conn, path)  # before WAL mode, which would change its header
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit survives power loss too, not only a crash of this process.
        conn.execute("PRAGMA synchronous = FULL")
        if max_pages is not None:
            conn.execute(f"PRAGMA max_page_count = {int(max_pages)}")
        _migrate(conn, path)
    except (sqlite3.Error, OSError, StoreError) as exc:
        if conn is not None:  # each failed attempt would otherwise keep its files open
            conn.close()
        if isinstance(exc, StoreError):
            raise
        detail = exc.strerror if isinstance(exc, OSError) else exc
        raise StoreError(f"cannot open the store {path}: {detail}") from None
    return conn


def empty_store(path: Path) -> str:
    return (f"the store {path} is empty: serve has not set it up yet, or it is a copy made "
            f"while serve ran, without its {path.name}-wal")


def open_for_reading(path: Path) -> sqlite3.Connection:
    """A read-only connection; each query is its own short transaction."""
    if not path.exists():
        raise StoreError(f"no store at {path} yet")
    if path.is_dir():  # SQLite would say only "disk I/O error"
        raise StoreError(f"{path} is a directory, not a store; move it aside")
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
        check_same_thread=False,
    )  # opens lazily: an unreadable file fails at the first query
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            _refuse_foreign(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot read the store {path}: {exc}") from None
    except StoreError:
        conn.close()
        raise
    if version == 0:
        conn.close()
        raise StoreNotSetUp(empty_store(path))
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer ot-hook; upgrade ot-hook")
    return conn


LOG_REMOVED = "-wal or -shm was removed"  # what a writer says when it followed a new log


class Writer:
    """A connection that may write, and that notices when its file is removed or replaced:
    writing on to a deleted file would answer 200 for deliveries nobody can read. It connects
    when first used, and again after such a change (`on_replaced` is told why)."""

    def __init__(self, path: Path, max_pages: int | None = None,
                 on_replaced: Callable[[str], None] | None = None,
                 log_copied_in: Callable[[], bool] | None = None) -> None:
        self.path = path
        self.max_pages = max_pages
        self.on_replaced = on_replaced
        # None: this connection copies a removed log into the store itself (serve's writer
        # process). Else it only lets go of the old log once this says the copier has.
        self.log_copied_in = log_copied_in
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._wal_identity: tuple[int, int] | None = None
        self._shm_identity: tuple[int, int] | None = None

    def connect(self) -> sqlite3.Connection:
        """The connection, opened (and the store created) if need be; raises StoreError."""
        said = None
        if self._conn is not None and file_identity(self.path) != self._identity:
            self.close()
            self._remove_old_log()
            said = (f"{self.path} was removed or replaced: storing in the file now there "
                    "(what was stored before is not in it)")
        elif self._conn is not None and self._log_removed():
            if self.log_copied_in is None:
                self._copy_in_removed_log()
            elif self.log_copied_in():
                self.close()  # the old log is copied in and empty: nothing to lose
                self._wal_identity = self._shm_identity = None
            else:
                raise StoreError(f"the store's log {self.path}-wal was removed: waiting for "
                                 "serve's writer to copy it into the store")
            said = (f"{self.path.name}{LOG_REMOVED} while serve ran: what the "
                    f"removed log held was copied into {self.path.name} first, and a new log "
                    "begun (leave them be while serve runs: they hold the latest deliveries)")
        try:
            if self._conn is None:
                self._conn = open_for_writing(self.path, max_pages=self.max_pages)
                self._identity = file_identity(self.path)
                # The log this connection reads and writes (see `_remove_old_log`); opening
                # made it, unless the file cannot take one yet.
                self._note_log()
        finally:
            if said is not None and self.on_replaced is not None:
                # Said once the new log is there: the writers tell one change by it.
                self.on_replaced(said)
        return self._conn

    def replaced(self) -> bool:
        """Whether the file at the store's path, or its log, is no longer the one this
        connection writes (removed, or another put in its place); the next transaction
        connects again."""
        return self._conn is not None and (
            file_identity(self.path) != self._identity or self._log_removed())

    def _note_log(self) -> None:
        self._wal_identity, self._shm_identity = log_identity(self.path)

    def _log_removed(self) -> bool:
        """Whether the -wal or -shm this connection uses is gone from its path (`rm
        events.db-wal`): SQLite would go on writing to the removed log, which no other
        connection sees and a crash takes with it."""
        return self._wal_identity is not None and \
            log_identity(self.path) != (self._wal_identity, self._shm_identity)

    def _copy_in_removed_log(self) -> None:
        """Copy what the removed log holds into the store file, then let go of it: the next
        connection begins a new log at the log's path (closed first: SQLite shares one -shm
        among a process's connections to a file, and the new log needs a new one).

        The copy goes through the old -shm, the index of the old -wal. Only this connection
        copies (serve's other one waits for it, see `log_copied_in`), so the index still
        describes the old -wal whatever a reader opened meanwhile. TRUNCATE empties the old
        -wal and resets the index, for the connections that pair the old -shm with a new
        -wal; only when the old -wal is no longer the file at the path."""
        assert self._conn is not None
        wal_now, _ = log_identity(self.path)
        mode = "PASSIVE" if wal_now == self._wal_identity else "TRUNCATE"
        try:
            busy, log, copied = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"the store's log {self.path}-wal was removed, and what it held "
                             f"cannot be copied into the store: {exc}") from None
        if busy or log != copied:  # closing now would lose what is not copied
            raise StoreError(f"the store's log {self.path}-wal was removed, and a reader "
                             "still holds it: it is copied into the store once the reader "
                             "lets go")
        self.close()
        self._wal_identity = self._shm_identity = None

    def log_removed(self) -> bool:
        """Whether this connection's -wal or -shm was removed from its path, the store file
        itself still being the one it writes."""
        return self._conn is not None and file_identity(self.path) == self._identity \
            and self._log_removed()

    def _remove_old_log(self) -> None:
        """A file put in place of the store (a backup, say) must not be read through the old
        store's -wal and -shm: SQLite would apply the old log to it and corrupt it. The -wal is
        the old store's if it is still the file this connection wrote to; another writer that
        noticed first has already removed it and made a new one."""
        wal = Path(f"{self.path}-wal")
        if self._wal_identity is not None and file_identity(wal) == self._wal_identity:
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
        self._wal_identity = None

    def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self.connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if self._wal_identity is None:  # the log this connection writes to (see above)
            self._note_log()
        return result

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def file_identity(path: Path) -> tuple[int, int] | None:
    """Which file `path` is now (device, inode), or None when there is none: tells a store
    removed or replaced under a running reader or writer."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def log_identity(path: Path) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """Which -wal and -shm the store at `path` has now: a reader that holds the old ones
    after they were removed sees none of what is written since."""
    return file_identity(Path(f"{path}-wal")), file_identity(Path(f"{path}-shm"))


def damage(path: Path) -> str | None:
    """What SQLite's quick_check finds wrong with the store, or None when it is whole. Reads
    every page: run it off the event loop (a reader never holds up the writer in WAL mode)."""
    try:
        conn = open_for_reading(path)
    except StoreError as exc:
        return str(exc)
    try:
        (first,) = conn.execute("PRAGMA quick_check(1)").fetchone()
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()
    return None if first == "ok" else str(first)


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """What goes wrong while reading the store at `path` as StoreError, one line for the user:
    a damaged file ("database disk image is malformed"), a disk error, a row whose JSON is
    broken. Also around a generator's yields, whose reads happen only as it is consumed."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the store {path}: {exc}") from None
    except json.JSONDecodeError as exc:  # the warnings or headers of a damaged row
        raise StoreError(f"cannot read the store {path}: a damaged row ({exc})") from None


# The highest row given out, as an SQL expression: AUTOINCREMENT's counter (it never goes
# back, even after prune), or the highest row should that counter have been edited by hand.
# The writer numbers past it, as AUTOINCREMENT itself would.
# The counter counts only as a whole number: edited by hand to text or a fraction, it would
# pass every row number (text sorts after numbers in SQLite) and break the numbering.
LAST_ROW_SQL = ("max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'deliveries' "
                "AND typeof(seq) = 'integer'), 0), coalesce((SELECT max(row) FROM deliveries), 0))")


def first_accepted_sql(count: int) -> str:
    """The first accepted row of each of `count` event Ids (through the partial index)."""
    return (
        "SELECT event_id, MIN(row) FROM deliveries WHERE outcome = 'accepted' AND "
        f"event_id IN ({','.join('?' * count)}) GROUP BY event_id"
    )


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
