"""The receiver's status lines on stderr: the banner, then one line per request.

Lines are handed to a writer thread through a bounded queue, so a slow or stopped terminal
never blocks the event loop: when the queue is full, lines are dropped and counted, and the
count is reported as soon as the writer catches up.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import TextIO

from aiohttp.web import RequestPayloadError as PayloadError

from ot_hook.receiver import RequestRecord, describe, without_secrets
from ot_hook.textsafe import printable

QUEUE_LINES = 10_000


class StatusLog:
    def __init__(self, stream: TextIO, *, quiet: bool = False) -> None:
        self._stream = stream
        self._quiet = quiet
        self._queue: queue.Queue[str | None] = queue.Queue(QUEUE_LINES)
        self._dropped = 0
        self._store_failing = False
        self._stopping_at_once = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ot-hook-log", daemon=True)
        self._thread.start()

    def line(self, text: str) -> None:
        """Queue a status line; never blocks."""
        try:
            self._queue.put_nowait(text)
        except queue.Full:
            with self._lock:
                self._dropped += 1

    def request(self, record: RequestRecord) -> None:
        # A store that stops (or starts again) taking writes is said even with --quiet.
        failing = record.outcome == "unavailable"
        if self._stopping_at_once:  # the writer was stopped on purpose: nothing is failing
            pass
        elif failing != self._store_failing and (failing or record.row is not None):
            self._store_failing = failing
            self.line(
                f"{_now()} STORE FAILING: {record.reason}; answering 503 until it can be written"
                if failing else f"{_now()} store: writing again"
            )
        if not self._quiet:
            self.line(format_request(record))

    def stopping_at_once(self) -> None:
        self.line("Stopping at once: deliveries in flight get no answer (their senders see a "
                  "broken connection and should send them again)")
        self._stopping_at_once = True

    def plain_http(self, remote: str | None) -> None:
        if not self._quiet:
            self.line(f"{_now()} 400 plain HTTP from {remote or '?'} (told to use HTTPS)")

    def close(self, timeout: float = 5) -> None:
        """Write what is queued and stop the writer; give up after `timeout` on a stuck stderr."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            text = self._queue.get()
            if text is None:
                return
            with self._lock:
                dropped, self._dropped = self._dropped, 0
            with contextlib.suppress(OSError, ValueError):  # a closed stderr loses only lines
                if dropped:
                    self._stream.write(f"({dropped} log lines dropped: stderr was too slow)\n")
                self._stream.write(text + "\n")
                self._stream.flush()


class OneLineHandler(logging.Handler):
    """aiohttp logs malformed requests (bad headers, unknown encodings) with a traceback;
    on serve's console that is one line, like every other refused request."""

    def __init__(self, log: StatusLog) -> None:
        super().__init__(logging.INFO)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], PayloadError):
            return  # a body that could not be read: its request is answered, stored and logged
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text += f": {error.__class__.__name__}: {' '.join(str(error).split())}"
        self._log.line(f"{_now()} {printable(without_secrets(text))[:300]}")


@contextlib.contextmanager
def aiohttp_errors_to(log: StatusLog) -> Iterator[None]:
    logger = logging.getLogger("aiohttp.server")
    handler = OneLineHandler(log)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _now() -> str:
    return datetime.now().strftime("%H:%M:%S")


def format_request(record: RequestRecord) -> str:
    parts = [_now(), str(record.status), f"{record.outcome:<9}"]
    if record.event is not None:
        parts.append(describe(record.event))
    if record.row is not None:
        parts.append(f"row {record.row}")
    if record.reason:
        parts.append(f"({record.reason})")
    if record.outcome not in ("accepted", "duplicate"):
        parts.append(f"from {record.remote or '?'}")
    parts.append(f"{record.size} B {record.millis:.1f} ms")
    return " ".join(parts)
