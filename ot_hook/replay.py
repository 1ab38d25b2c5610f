"""ot-hook replay: send stored deliveries again, byte for byte, to the user's app or a receiver.

Selection reuses tail's filters (the same flags mean the same thing) plus store row numbers;
sending reuses send-sample's Sender (trust, retries, results and the exit code).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ot_hook import home, store, tail
from ot_hook.sender import Outgoing


class ReplayError(Exception):
    """Nothing can be replayed as asked; the message is one line for the user."""


@dataclass(frozen=True)
class Selection:
    filters: tail.Filters
    rows: tuple[int, ...] = ()
    everything: bool = False  # --all

    def is_empty(self) -> bool:
        return not (self.everything or self.rows or self.filters != tail.Filters())


def selected(path: Path, selection: Selection) -> Iterator[store.StoredDelivery]:
    """The stored deliveries the selection names, oldest first, read a batch at a time."""
    if selection.is_empty():
        raise ReplayError(
            "say what to replay: --row, --id, --unique-id, --since, --action, --record, "
            "--status, or --all"
        )
    try:
        conn = store.open_for_reading(path)
    except store.StoreError as exc:
        raise ReplayError(str(exc)) from None
    try:
        filters = selection.filters
        if selection.rows:
            rows = ",".join(str(int(n)) for n in selection.rows)
            where, params = filters.sql()
            condition = f"row IN ({rows})" + (f" AND ({where})" if where else "")
            yield from store.read_rows(conn, condition, params)
        else:
            yield from tail.between(conn, filters, 0, tail.last_row(conn))
    finally:
        conn.close()


def outgoing(delivery: store.StoredDelivery) -> Outgoing:
    """What goes out: the stored bytes and content type, untouched."""
    return Outgoing.of(delivery.body, content_type=delivery.content_type)


def default_target(state: Path) -> str | None:
    """The running receiver's --forward-to target, else the receiver itself, else None."""
    info = home.read_serve_info(state)
    if info is None:
        return None
    return info.forward_to or info.url
