"""ot-hook replay: send stored deliveries again, byte for byte, to the user's app or a receiver.

Selection reuses tail's filters (the same flags mean the same thing) plus store row numbers;
sending reuses send-sample's Sender (trust, retries, results and the exit code).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ot_hook import home, store, tail
from ot_hook.sender import Outgoing


class ReplayError(Exception):
    """Nothing can be replayed as asked; the message is one line for the user."""


RELAY_STATES = ("pending", "delivered", "failed")


@dataclass(frozen=True)
class Selection:
    filters: tail.Filters
    rows: tuple[int, ...] = ()
    everything: bool = False  # --all
    relay_states: tuple[str, ...] = ()  # deliveries whose serve --forward-to relay is in these

    def is_empty(self) -> bool:
        return not (self.everything or self.rows or self.relay_states
                    or self.filters != tail.Filters())

    def sql(self) -> tuple[str, list[object]]:
        where, params = self.filters.sql()
        conditions = [where] if where else []
        if self.rows:
            conditions.append(f"row IN ({','.join(str(int(n)) for n in self.rows)})")
        if self.relay_states:
            marks = ",".join("?" * len(self.relay_states))
            conditions.append(f"row IN (SELECT row FROM relays WHERE state IN ({marks}))")
            params = [*params, *self.relay_states]
        return " AND ".join(f"({c})" for c in conditions), params


def selected(path: Path, selection: Selection) -> Iterator[store.StoredDelivery]:
    """The stored deliveries the selection names, oldest first, read a batch at a time."""
    if selection.is_empty():
        raise ReplayError(
            "say what to replay: --row, --id, --unique-id, --since, --action, --record, "
            "--status, --relay, or --all"
        )
    try:
        with store.reading(path):  # a damaged store: one line, as tail says it
            yield from _selected(path, selection)
    except store.StoreError as exc:
        raise ReplayError(str(exc)) from None


def _selected(path: Path, selection: Selection) -> Iterator[store.StoredDelivery]:
    conn = store.open_for_reading(path)
    try:
        where, params = selection.sql()
        after, last = 0, tail.last_row(conn)
        while after < last:  # a batch at a time, so that memory stays flat
            bounded = f"row > ? AND row <= ?{f' AND {where}' if where else ''}"
            try:
                rows = store.read_rows(conn, bounded, [after, last, *params], limit=tail.BATCH)
            except sqlite3.OperationalError as exc:  # a store from before serve --forward-to
                raise ReplayError(f"cannot select from {path}: {exc}") from None
            yield from rows
            if len(rows) < tail.BATCH:
                return
            after = rows[-1].row
    finally:
        conn.close()


def count(path: Path, selection: Selection) -> int:
    """How many stored deliveries the selection names (a count, not a read of their bodies)."""
    where, params = selection.sql()
    try:
        with store.reading(path):
            conn = store.open_for_reading(path)
            try:
                sql = "SELECT count(*) FROM deliveries" + (f" WHERE {where}" if where else "")
                return int(conn.execute(sql, params).fetchone()[0])
            finally:
                conn.close()
    except store.StoreError as exc:
        raise ReplayError(str(exc)) from None


def relay_targets(path: Path, states: tuple[str, ...]) -> list[str]:
    """The --forward-to targets of the relays in these states, so that `replay --relay`
    knows where to send with serve stopped. Raises ReplayError when the store cannot say."""
    marks = ",".join("?" * len(states))
    try:
        with store.reading(path):
            conn = store.open_for_reading(path)
            try:
                rows = conn.execute(
                    f"SELECT DISTINCT target FROM relays WHERE state IN ({marks}) "
                    "ORDER BY target LIMIT 4", states).fetchall()
            finally:
                conn.close()
    except store.StoreError as exc:
        raise ReplayError(str(exc)) from None
    except sqlite3.OperationalError:  # a store from before serve --forward-to: no relays
        return []
    return [row[0] for row in rows]


def outgoing(delivery: store.StoredDelivery) -> Outgoing:
    """What goes out: the stored bytes and content type, untouched."""
    return Outgoing.of(delivery.body, content_type=delivery.content_type)


def mark_relayed(path: Path, replayed: dict[int, int], target: str) -> int:
    """After a replay to the --forward-to target: record the deliveries it got (row -> HTTP
    status) as relayed, so that `replay --relay failed` does not send them again. Returns how
    many relays changed. A short transaction beside a running receiver, like prune's.
    Raises StoreError when the store cannot be written."""
    if not replayed:
        return 0
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    conn = store.open_for_writing(path)
    try:
        return _mark(conn, replayed, target, now)
    except sqlite3.Error as exc:
        raise store.StoreError(f"cannot record the replay in the store {path}: {exc}") from None
    finally:
        conn.close()


def _mark(conn: sqlite3.Connection, replayed: dict[int, int], target: str, now: str) -> int:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        changed = 0
        for row, status in replayed.items():
            updated = conn.execute(
                "UPDATE relays SET state = 'delivered', attempts = attempts + 1 "
                "WHERE row = ? AND target = ? AND state != 'delivered'", (row, target))
            if updated.rowcount:
                changed += 1
                conn.execute(
                    "INSERT INTO relay_attempts (row, attempt, attempted_at, status, millis,"
                    " error, state) SELECT row, attempts, ?, ?, 0, 'sent by replay',"
                    " 'delivered' FROM relays WHERE row = ?", (now, status, row))
        return changed


def default_target(state: Path) -> str | None:
    """The running receiver's --forward-to target, else the receiver itself, else None."""
    info = home.read_serve_info(state)
    if info is None:
        return None
    return info.forward_to or info.url
