"""Deleting old deliveries, a batch per transaction so a running receiver never waits long."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

from ot_hook import store
from ot_hook.tail import stored_time

BATCH = 5000  # rows per transaction: the receiver's writer waits for one batch at most
RELAY_TABLES = ("relay_attempts", "relays")  # serve --forward-to's rows, by the delivery's row


class NoStore(Exception):
    """There is no store at the path; the message is one line for the user."""


# A delivery still waiting to be relayed to the user's app is kept: pruning it would lose
# a delivery that was answered 200 but never reached the app.
NOT_PENDING = "row NOT IN (SELECT row FROM relays WHERE state = 'pending')"


def prune(path: Path, before: datetime | None) -> int:
    """Delete deliveries received before `before` (all of them when None), and what
    `serve --forward-to` kept about relaying them; return how many deliveries went.
    Deliveries whose relay is still pending stay (see `pending_kept`).

    Row numbers are never reused (AUTOINCREMENT), so a following `tail` is not confused.
    Raises NoStore, and StoreError when the store cannot be written.
    """
    if not path.exists():
        raise NoStore(f"no store at {path}; nothing to prune")
    if path.is_file() and path.stat().st_size == 0:  # not to be made into a store here
        raise NoStore(store.empty_store(path))
    where, params = _older_than(before)
    batch = (f"SELECT row FROM deliveries WHERE {where} AND {NOT_PENDING} "
             f"ORDER BY row LIMIT {BATCH}")
    conn = store.open_for_writing(path)  # brings the schema up to date: the relay tables exist
    deleted = 0
    try:
        while True:
            # One transaction per batch, so a delivery never goes without its relay rows
            # or the other way round; IMMEDIATE, so the batch cannot change in between.
            conn.execute("BEGIN IMMEDIATE")
            for table in RELAY_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE row IN ({batch})", params)
            cursor = conn.execute(f"DELETE FROM deliveries WHERE row IN ({batch})", params)
            conn.execute("COMMIT")
            deleted += cursor.rowcount
            if cursor.rowcount < BATCH:
                return deleted
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.rollback()
        raise store.StoreError(
            f"cannot prune the store {path} (deleted {deleted} so far): {exc}"
        ) from None
    finally:
        conn.close()


def pending_kept(path: Path, before: datetime | None) -> int:
    """How many deliveries prune would delete but keeps, because their relay is pending.
    Raises StoreError when the store cannot be read."""
    where, params = _older_than(before)
    conn = store.open_for_writing(path)
    try:
        with store.reading(path):  # a damaged store: one line, as prune itself says it
            found = conn.execute(
                f"SELECT count(*) FROM deliveries WHERE {where} AND NOT ({NOT_PENDING})", params
            ).fetchone()
        return int(found[0])
    finally:
        conn.close()


def _older_than(before: datetime | None) -> tuple[str, list[str]]:
    return ("received_at < ?", [stored_time(before)]) if before else ("1", [])
