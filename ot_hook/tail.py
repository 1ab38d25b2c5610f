"""Reading the store as deliveries arrive: filters as SQL, the last N rows, then follow.

While following it also shows each attempt `serve --forward-to` makes to relay a delivery
(the `relay_attempts` table, store migration 3), interleaved with the deliveries.

The reader must never get in the receiver's way: it uses a read-only connection, fetches each
result whole so every read transaction ends at once, and asks SQLite `PRAGMA data_version`
(which only looks at shared memory) whether anything was committed before it queries rows.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from ot_hook import codes, render, store
from ot_hook.events import INT64_MAX, INT64_MIN
from ot_hook.terminal import Terminal

POLL_INTERVAL = 0.05  # seconds between data_version checks: quick to see, cheap when idle
WAIT_INTERVAL = 0.2  # seconds between looks for a store that does not exist yet
RECHECK_INTERVAL = 1.0  # seconds between looks at the file itself (replaced? sequence moved?)
BATCH = 500  # rows per read, so that memory stays flat however far behind we are


class FilterError(ValueError):
    """A filter the user gave cannot be understood; the message is one line for them."""


class NoStore(Exception):
    """There is no store to read (only raised when not following)."""


# Filters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """Which deliveries to show; empty means no restriction. All given filters must match."""

    actions: tuple[int, ...] = ()
    records: tuple[int, ...] = ()
    ids: tuple[int, ...] = ()
    unique_ids: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()
    since: str | None = None  # a stored-format UTC time: received_at >= since
    grep: str | None = None

    def sql(self) -> tuple[str, list[Any]]:
        """A WHERE condition (without the word) and its parameters; "" when nothing filters."""
        conditions: list[str] = []
        params: list[Any] = []
        for column, values in (
            ("action_type", self.actions), ("record_type", self.records),
            ("unique_id", self.unique_ids), ("outcome", self.outcomes),
        ):
            if values:
                conditions.append(f"{column} IN ({_marks(values)})")
                params.extend(values)
        if self.ids:
            # Said per outcome so that each half uses its partial index (store migration 2);
            # rejected deliveries have no event_id.
            conditions.append(
                f"((outcome = 'accepted' AND event_id IN ({_marks(self.ids)})) OR "
                f"(outcome = 'duplicate' AND event_id IN ({_marks(self.ids)})))"
            )
            params.extend([*self.ids, *self.ids])
        if self.since is not None:
            conditions.append("received_at >= ?")
            params.append(self.since)
        if self.grep:
            pattern = "%" + re.sub(r"([\\%_])", r"\\\1", self.grep) + "%"
            columns = ("description", "username", "unique_id", "reason", "CAST(body AS TEXT)")
            likes = [f"{c} LIKE ? ESCAPE '\\'" for c in columns]
            # LIKE stops at a NUL. Only a rejected body can hold a raw one (JSON escapes it,
            # and the escaped text is what LIKE reads in the body): instr reads past it, at
            # three times LIKE's cost, so only for those.
            likes.append("(outcome = 'rejected' AND instr(body, x'00') > 0 AND "
                         "instr(lower(CAST(body AS TEXT)), lower(?)) > 0)")
            conditions.append("(" + " OR ".join(likes) + ")")
            params.extend([pattern] * len(columns) + [self.grep])
        return " AND ".join(conditions), params


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def parse_codes(values: Iterable[str], kind: codes.Kind) -> tuple[int, ...]:
    """Codes given as numbers (known or not) or names ("change status", "SalesOrder")."""
    from ot_hook import decode

    try:
        return tuple(decode.code_for(kind, value) for value in values)
    except decode.LookupFailed as exc:
        raise FilterError(f"--{kind}: {exc}") from None


def parse_ids(values: Iterable[int]) -> tuple[int, ...]:
    """Ids as the store keeps them: no stored delivery has one beyond 64 bits."""
    found = tuple(values)
    for value in found:
        if not INT64_MIN <= value <= INT64_MAX:
            raise FilterError(f"--id {value} is beyond the 64-bit range of Audit Trail Ids")
    return found


def parse_outcomes(values: Iterable[str]) -> tuple[str, ...]:
    found = tuple(v.strip().lower() for v in values)
    for value in found:
        if value not in store.OUTCOMES:
            raise FilterError(f"--status must be one of {', '.join(store.OUTCOMES)}, "
                              f"not {value!r}")
    return found


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)")
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta | None:
    """A duration such as 10m, 1h30m, 2d or 1w; None when `text` is not one."""
    squashed = text.strip().lower()
    if not squashed or _DURATION_PART.sub("", squashed).strip():
        return None
    seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(squashed))
    return timedelta(seconds=seconds)


def parse_since(text: str, *, now: datetime | None = None, tz: tzinfo | None = None) -> str:
    """The earliest received_at to show: a duration back from now, or a timestamp (local time
    unless it carries an offset). Returned in the store's own format, so it compares as text."""
    moment = parse_moment(text, now=now, tz=tz)
    return stored_time(moment)


def parse_moment(text: str, *, now: datetime | None = None, tz: tzinfo | None = None) -> datetime:
    try:
        duration = parse_duration(text)
        if duration is not None:
            return (now or datetime.now(UTC)) - duration
    except (OverflowError, ValueError):  # 800000d: before the year 1
        raise FilterError(f"{text!r} reaches back before the year 1") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FilterError(
            f"cannot read {text!r} as a duration (10m, 2h, 7d) or a time (2024-01-03T10:17, "
            "optionally with an offset such as +05:30 or Z)"
        ) from None
    if moment.tzinfo is None:
        try:
            moment = moment.replace(tzinfo=tz) if tz is not None else moment.astimezone()
        except (OverflowError, ValueError):
            raise FilterError(f"{text!r} is out of the range of dates") from None
    return moment


def stored_time(moment: datetime) -> str:
    """`moment` written as the receiver writes received_at (UTC, microseconds, Z)."""
    try:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (OverflowError, ValueError):  # 0001-01-01 in a zone east of UTC
        return "0001-01-01T00:00:00.000000Z" if moment.year < 2 else "9999-12-31T23:59:59Z"


# Reading ---------------------------------------------------------------------------------


def open_reader(path: Path) -> sqlite3.Connection | None:
    """A read-only connection, or None while there is no store yet (or the receiver is still
    writing its schema). Raises StoreError when the store exists but cannot be read."""
    if not path.exists():
        return None
    try:
        return store.open_for_reading(path)
    except store.StoreNotSetUp:
        return None


@dataclass(frozen=True)
class RelayAttempt:
    """One attempt of `serve --forward-to` to relay delivery `row` to the user's app."""

    id: int
    row: int  # the delivery's row
    attempt: int  # 1 for the first try
    attempted_at: str  # UTC, ISO 8601 with Z
    status: int | None  # the app's HTTP status; None when no answer came
    millis: float
    error: str | None
    state: str  # the relay's state after this attempt: pending, delivered or failed


Shown = store.StoredDelivery | RelayAttempt


@dataclass(frozen=True)
class Marks:
    """How far the store has got, read in one transaction so the two agree."""

    row: int  # the highest delivery row given out
    attempt: int | None  # the highest relay attempt id; None: no relay_attempts table (yet)


def marks(conn: sqlite3.Connection) -> Marks:
    row, attempt, relays = conn.execute(
        f"SELECT {store.LAST_ROW_SQL}, "
        "(SELECT seq FROM sqlite_sequence WHERE name = 'relay_attempts' "
        "AND typeof(seq) = 'integer'), "
        "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'relay_attempts')"
    ).fetchone()
    return Marks(int(row or 0), int(attempt or 0) if relays else None)


def last_row(conn: sqlite3.Connection) -> int:
    """The highest row number ever given out (AUTOINCREMENT: never reused, even after prune)."""
    (found,) = conn.execute(f"SELECT {store.LAST_ROW_SQL}").fetchone()
    return int(found)


def latest(
    conn: sqlite3.Connection, filters: Filters, count: int, up_to: int
) -> list[store.StoredDelivery]:
    """The last `count` matching rows up to row `up_to`, oldest first."""
    if count <= 0:
        return []
    where, params = _bounded(filters, "row <= ?", [up_to])
    rows = store.read_rows(conn, where, params, order="row DESC", limit=count)
    return rows[::-1]


def between(
    conn: sqlite3.Connection, filters: Filters, after: int, up_to: int
) -> Iterator[store.StoredDelivery]:
    """Matching rows in (after, up_to], oldest first, read a batch at a time."""
    while after < up_to:
        where, params = _bounded(filters, "row > ? AND row <= ?", [after, up_to])
        rows = store.read_rows(conn, where, params, limit=BATCH)
        yield from rows
        if len(rows) < BATCH:
            return
        after = rows[-1].row


def attempts_between(
    conn: sqlite3.Connection, filters: Filters, after: int, up_to: int
) -> Iterator[RelayAttempt]:
    """Relay attempts with ids in (after, up_to] whose delivery matches `filters` (and is still
    stored), oldest first, read a batch at a time."""
    where, params = filters.sql()
    # A correlated lookup by the delivery's row: the filter's column names resolve to
    # `deliveries` inside it, whatever columns relay_attempts has or gets.
    exists = "SELECT 1 FROM deliveries WHERE deliveries.row = a.row" + (
        f" AND ({where})" if where else ""
    )
    while after < up_to:
        rows = conn.execute(
            "SELECT a.id, a.row, a.attempt, a.attempted_at, a.status, a.millis, a.error, a.state"
            f" FROM relay_attempts AS a WHERE a.id > ? AND a.id <= ? AND EXISTS ({exists})"
            f" ORDER BY a.id LIMIT {BATCH}",
            [after, up_to, *params],
        ).fetchall()
        yield from (RelayAttempt(*row) for row in rows)
        if len(rows) < BATCH:
            return
        after = rows[-1][0]


def interleave(
    found: Iterator[store.StoredDelivery], attempts: Iterator[RelayAttempt]
) -> Iterator[Shown]:
    """Both streams merged as near to commit order as their times tell, each kept in its own
    order, and an attempt never before its own delivery."""
    delivery = next(found, None)
    for attempt in attempts:
        while delivery is not None and (
            delivery.row <= attempt.row or delivery.received_at <= attempt.attempted_at
        ):
            yield delivery
            delivery = next(found, None)
        yield attempt
    if delivery is not None:
        yield delivery
        yield from found


def _bounded(filters: Filters, bound: str, bound_params: list[Any]) -> tuple[str, list[Any]]:
    where, params = filters.sql()
    return (f"{bound} AND ({where})" if where else bound), [*bound_params, *params]


@dataclass
class Follow:
    """What to read: the store at `path`, the last `last` matching rows, then (when `follow`)
    every new matching row, and (when `relays`) every relay attempt of a matching row, until
    `stop()` says so."""

    path: Path
    filters: Filters = field(default_factory=Filters)
    last: int = 10
    follow: bool = True
    relays: bool = True
    poll_interval: float = POLL_INTERVAL
    wait_interval: float = WAIT_INTERVAL
    recheck_interval: float = RECHECK_INTERVAL


def deliveries(
    spec: Follow,
    *,
    status: Callable[[str], None],
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Shown]:
    """Yield stored deliveries (and, while following, relay attempts) as `spec` asks. Raises
    NoStore (not following, no store) and StoreError (a store that cannot be read)."""
    with store.reading(spec.path):  # every read below, the filters' and the following's too
        yield from _deliveries(spec, status, stop, sleep, clock)


def _deliveries(
    spec: Follow, status: Callable[[str], None], stop: Callable[[], bool],
    sleep: Callable[[float], None], clock: Callable[[], float],
) -> Iterator[Shown]:
    conn = _wait_for_store(spec, status, stop, sleep)
    if conn is None:
        return
    try:
        at = marks(conn)
        seen = at.row
        # The backlog is deliveries only; relay attempts are shown from now on. None: the store
        # has no relay_attempts table yet (an older schema, or one being made), so every
        # attempt is new once it appears.
        relays_seen = at.attempt
        yield from latest(conn, spec.filters, spec.last, seen)
        if not spec.follow:
            return
        version = _data_version(conn)
        status(f"following {spec.path} (Ctrl-C to stop)")
        identity, log = store.file_identity(spec.path), store.log_identity(spec.path)
        next_recheck = clock() + spec.recheck_interval
        failing_since: float | None = None  # when reads began to fail with an I/O error
        while not stop():
            sleep(spec.poll_interval)
            try:
                changed = _data_version(conn) != version
                if clock() >= next_recheck:
                    next_recheck = clock() + spec.recheck_interval
                    if store.file_identity(spec.path) == identity \
                            and store.log_identity(spec.path) != log:
                        # Its -wal or -shm removed: this connection would read the old log
                        # for ever, and see nothing serve writes to the new one.
                        conn, log = _reopen(spec, conn, sleep, clock() + IO_ERROR_PATIENCE,
                                            clock)
                        changed = True
                    elif store.file_identity(spec.path) != identity:  # deleted or replaced
                        conn.close()
                        status(f"the store {spec.path} was replaced; following the new one")
                        reopened = _wait_for_store(spec, status, stop, sleep)
                        if reopened is None:
                            return
                        conn = reopened
                        seen, relays_seen, changed = 0, None, True
                        identity = store.file_identity(spec.path)
                        log = store.log_identity(spec.path)
                    at = marks(conn)  # a safety net; cheap
                    changed = changed or at.row != seen or (
                        spec.relays and at.attempt != relays_seen)
                if failing_since is not None:
                    failing_since = None
                    status(f"reading {spec.path} again")
                    changed = True
                if not changed:
                    continue
                version = _data_version(conn)  # before reading: nothing committed after is lost
                at = marks(conn)
                # Read whole, then shown: a read that fails halfway shows nothing twice.
                found = between(conn, spec.filters, seen, at.row)
                shown: list[Shown] = []
                if spec.relays and at.attempt is not None:
                    after = relays_seen or 0
                    shown.extend(interleave(found, attempts_between(conn, spec.filters, after,
                                                                    at.attempt)))
                else:
                    shown.extend(found)
            except sqlite3.Error as exc:
                # A store whose -wal was just removed reads as "disk I/O error" until serve
                # has copied the old log in (a second or so): wait for that, not for damage.
                if not _io_error(exc) or (failing_since is not None
                                          and clock() - failing_since > IO_ERROR_PATIENCE):
                    raise
                if failing_since is None:
                    failing_since = clock()
                    status(f"cannot read {spec.path} now ({exc}); trying again")
                conn, log = _reopen(spec, conn, sleep, failing_since + IO_ERROR_PATIENCE,
                                    clock)
                continue
            yield from shown
            seen = at.row
            if spec.relays and at.attempt is not None:
                relays_seen = at.attempt
    finally:
        conn.close()


IO_ERROR_PATIENCE = 10.0  # seconds of "disk I/O error" before tail -f gives up


def _io_error(exc: sqlite3.Error) -> bool:
    return str(getattr(exc, "sqlite_errorname", "")).startswith("SQLITE_IOERR")


def _reopen(spec: Follow, conn: sqlite3.Connection, sleep: Callable[[float], None],
            give_up_at: float, clock: Callable[[], float]) -> tuple[sqlite3.Connection, Any]:
    """A new reader of the store and the log it reads. The old one is closed first: SQLite
    shares one -shm among a process's connections to a file, and the new log needs its
    own. Raises StoreError when none can be opened by `give_up_at`."""
    conn.close()
    while True:
        try:
            fresh = store.open_for_reading(spec.path)
        except store.StoreError:
            if clock() >= give_up_at:
                raise
            sleep(spec.wait_interval)
            continue
        return fresh, store.log_identity(spec.path)


def _wait_for_store(
    spec: Follow, status: Callable[[str], None], stop: Callable[[], bool],
    sleep: Callable[[float], None],
) -> sqlite3.Connection | None:
    """Open the store, waiting (when following) until it exists; None when told to stop."""
    conn = open_reader(spec.path)
    if conn is not None:
        return conn
    empty = spec.path.exists()
    if not spec.follow:
        if empty:
            raise NoStore(store.empty_store(spec.path))
        raise NoStore(f"no store at {spec.path} yet; start 'ot-hook serve' to make one")
    if empty:
        status(f"{store.empty_store(spec.path)}; waiting for 'ot-hook serve' to set it up")
    else:
        status(f"no store at {spec.path} yet; waiting for 'ot-hook serve' to make one")
    while not stop():
        sleep(spec.wait_interval)
        conn = open_reader(spec.path)
        if conn is not None:
            return conn
    return None


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


# Showing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    """How to show each delivery."""

    json_lines: bool = False
    verbose: bool = False
    utc: bool = False
    tz: tzinfo | None = None  # None: the system's zone


def printer(terminal: Terminal, look: Look) -> Callable[[Shown], None]:
    """A function that shows one delivery or relay attempt on `terminal.stdout` and flushes
    at once."""
    out = terminal.stdout
    if look.json_lines or not terminal.pretty:

        def print_json(item: Shown) -> None:
            if isinstance(item, RelayAttempt):
                out.write(render.relay_json_line(item) + "\n")
            else:
                out.write(render.json_line(item, headers=look.verbose) + "\n")
            out.flush()

        return print_json

    console = terminal.console()

    def print_line(item: Shown) -> None:
        # soft_wrap: one delivery stays one line; the terminal wraps it, not rich
        if isinstance(item, RelayAttempt):
            console.print(render.relay_line(item, utc=look.utc, tz=look.tz), soft_wrap=True)
        else:
            console.print(render.line(item, utc=look.utc, tz=look.tz), soft_wrap=True)
            if look.verbose:
                console.print(render.details(item), soft_wrap=True)
        out.flush()

    return print_line


def run(
    spec: Follow,
    terminal: Terminal,
    look: Look | None = None,
    *,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Show what `spec` asks for on `terminal`; returns how many lines (deliveries and relay
    attempts) were shown."""
    show = printer(terminal, look or Look())
    shown = 0
    for item in deliveries(spec, status=terminal.status, stop=stop):
        show(item)
        shown += 1
    return shown


def resolve_filters(
    *,
    actions: Sequence[str] = (),
    records: Sequence[str] = (),
    ids: Sequence[int] = (),
    unique_ids: Sequence[str] = (),
    outcomes: Sequence[str] = (),
    since: str | None = None,
    grep: str | None = None,
    now: datetime | None = None,
    tz: tzinfo | None = None,
) -> Filters:
    """Filters from what a user typed; raises FilterError with a one-line message."""
    return Filters(
        actions=parse_codes(actions, "action"),
        records=parse_codes(records, "record"),
        ids=parse_ids(ids),
        unique_ids=tuple(unique_ids),
        outcomes=parse_outcomes(outcomes),
        since=_since(since, now, tz),
        grep=grep or None,
    )


def _since(text: str | None, now: datetime | None, tz: tzinfo | None) -> str | None:
    if text is None:
        return None
    try:
        return parse_since(text, now=now, tz=tz)
    except FilterError as exc:
        raise FilterError(f"--since: {exc}") from None
