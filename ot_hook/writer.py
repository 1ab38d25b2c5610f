"""The receiver's writer: a child process that commits deliveries in batches, and `Store`,
the receiver's handle on it.

In one process the SQLite work and the event loop share one GIL, and every row bound to a
statement and every commit stalls request handling (measured: the loop sat idle a fifth of the
time waiting for a writer thread that waited for the GIL). So `Store.open` starts
`python -m ot_hook.writer PATH FD MAX_PAGES MAX_BATCH` with one end of a socket pair, and the
writer also parses and validates each body: that is a tenth of a delivery's cost, and the
loop is what limits throughput. Both directions carry frames: a 4-byte length, then a pickle.

  receiver -> writer: first the code tables in use (they name unknown codes in warnings), then
  lists of rows (`row_of(delivery)`), in the order they were saved;
  writer -> receiver: one answer per transaction, `(count, saved, error, notice)`: `saved` is
  [(row, outcome, duplicate_of, http_status, reason, event key), ...] for the next `count`
  rows, or None with an `error`.

The writer takes everything waiting (group commit: one fsync for many deliveries), commits, and
only then answers; the receiver answers HTTP after that. It exits when the receiver closes its
end or dies, once what it has read is committed. It ignores SIGINT, SIGTERM and SIGHUP: Ctrl-C
or a closed terminal reaches the whole process group, and the receiver stops it in order.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import math
import os
import pickle
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import ot_hook
from ot_hook import codes
from ot_hook.events import (
    AuditEvent,
    EventKey,
    InvalidDelivery,
    content_type_warning,
    foreign_charset,
    parse_body,
)
from ot_hook.store import (
    LAST_ROW_SQL,
    LOG_REMOVED,
    Delivery,
    Outcome,
    Saved,
    StoreError,
    StoreUnavailable,
    Writer,
    file_identity,
    first_accepted_sql,
    log_identity,
)

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")

_LENGTH = struct.Struct("!I")
# 64 KiB: a larger buffer is its own mmap and munmap on every read (glibc's threshold is
# 128 KiB), three system calls per batch on each side; a long frame simply takes more reads.
_RECV_SIZE = 1 << 16
# A row on the wire: received_at, method, target, remote, content_type, headers, body,
# body_size, status, refused, relay_to (the fields of `Delivery`).
Row = tuple[Any, ...]
Result = tuple[int, Outcome, int | None, int, str | None, tuple[Any, ...] | None]
Answer = tuple[int, list[Result] | None, str | None, str | None]


def frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class Frames:
    """Bytes in, whole frames out: a socket delivers frames in pieces or several at once."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        values = []
        while len(self._buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer)
            end = _LENGTH.size + size
            if len(self._buffer) < end:
                break
            values.append(pickle.loads(self._buffer[_LENGTH.size : end]))
            del self._buffer[:end]
        return values


def row_of(d: Delivery) -> Row:
    return (d.received_at, d.method, d.target, d.remote, d.content_type, d.headers, d.body,
            d.body_size, d.status, d.refused, d.relay_to)


def commit(writer: Writer, rows: list[Row], numbering: Numbering | None = None) -> Answer:
    """Store `rows` in one transaction and say how; a failure answers for all of them.
    `numbering` carries what the writer knows between transactions (see `Numbering`)."""
    notices: list[str] = []
    writer.on_replaced = notices.append
    known = numbering or Numbering()
    try:
        saved = writer.transaction(lambda conn: _insert(conn, rows, known))
        known.committed()
        return len(rows), saved, None, _first(notices)
    except (StoreError, sqlite3.Error) as exc:
        error = str(exc) if isinstance(exc, StoreError) else \
            f"cannot write the store {writer.path}: {exc}"
    except Exception as exc:  # a bug must not stop the writer and hang every request
        error = f"cannot write the store {writer.path}: {exc!r}"
    known.forget()  # rolled back: the rows it counted were not stored
    return len(rows), None, error, _first(notices)


def _first(notices: list[str]) -> str | None:
    return notices[0] if notices else None


_COLUMNS = ("row, received_at, outcome, http_status, reason, warnings, duplicate_of, remote, "
            "method, target, content_type, headers, body, body_size, event_id, action_type, "
            "record_type, unique_id, description, username, action_date")
_WIDTH = _COLUMNS.count(",") + 1
_PER_STATEMENT = 50  # rows; a statement of each size up to it stays in the statement cache


@functools.lru_cache(maxsize=_PER_STATEMENT)
def _insert_sql(count: int) -> str:
    """One INSERT of `count` rows: a tenth less CPU per row than a statement per row."""
    placeholders = "(" + ", ".join("?" * _WIDTH) + ")"
    return f"INSERT INTO deliveries ({_COLUMNS}) VALUES {', '.join([placeholders] * count)}"


def _insert_rows(conn: sqlite3.Connection, values: list[Any]) -> None:
    """Insert rows given as one flat list of column values, `_PER_STATEMENT` at a time."""
    for start in range(0, len(values), _PER_STATEMENT * _WIDTH):
        chunk = values[start : start + _PER_STATEMENT * _WIDTH]
        conn.execute(_insert_sql(len(chunk) // _WIDTH), chunk)


class Numbering:
    """The last row number and the highest accepted Id, kept from one transaction to the
    next, so that most batches need no query before their inserts: Order Time numbers its
    Audit Trail upwards, and an Id above every accepted one cannot be a duplicate.

    Read again whenever another connection has written since (`PRAGMA data_version`: prune,
    relay outcomes, anything else), when the connection is new (the store was replaced), and
    after a transaction that failed. Row numbers never go below one this writer has given
    out, even in a file put in place of the store: an answer that named a row stays true.
    """

    def __init__(self) -> None:
        self._conn: sqlite3.Connection | None = None
        self._version = -1
        self._given_out = 0  # the highest row number a committed answer named
        self.last_row = 0
        # None: no accepted row yet; inf: one whose Id is not a number (the store was edited
        # by hand), so every Id is looked up.
        self.max_accepted: float | None = None

    def load(self, conn: sqlite3.Connection) -> None:
        """Bring both up to date; call inside the write transaction."""
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        if conn is self._conn and version == self._version:
            return
        (last_row,) = conn.execute(f"SELECT {LAST_ROW_SQL}").fetchone()
        (highest,) = conn.execute(
            "SELECT max(event_id) FROM deliveries WHERE outcome = 'accepted'").fetchone()
        self.last_row = max(self._given_out, last_row)
        self.max_accepted = highest if highest is None or isinstance(highest, int | float) \
            else math.inf
        self._conn, self._version = conn, version

    def committed(self) -> None:
        self._given_out = self.last_row

    def forget(self) -> None:
        self._conn = None


def _insert(conn: sqlite3.Connection, rows: list[Row], known: Numbering) -> list[Result]:
    """Parse each body, number the rows, tell accepted from duplicate, insert them and queue
    their relays.

    Rows are numbered here (this writer is the only one inserting deliveries) so that a
    duplicate of a delivery earlier in the same batch can name its row before anything is
    inserted. Only Ids that may repeat an accepted one are looked up.
    """
    checked = [_check(row) for row in rows]
    known.load(conn)
    highest = known.max_accepted
    ids = sorted({event.id for event, _, _ in checked
                  if event is not None and highest is not None and event.id <= highest})
    first_accepted: dict[int, int] = {}
    for chunk in range(0, len(ids), 500):  # stay well under SQLite's variable limit
        part = ids[chunk : chunk + 500]
        first_accepted.update(conn.execute(first_accepted_sql(len(part)), part).fetchall())
    last = known.last_row
    results: list[Result] = []
    values: list[Any] = []  # every row's columns, one after another
    relays: list[tuple[int, str, str]] = []
    numbers = range(last + 1, last + 1 + len(rows))
    for row, (received_at, method, target, remote, content_type, headers, body, body_size,
              _, _, relay_to), (event, http_status, reason) in zip(
            numbers, rows, checked, strict=True):
        outcome: Outcome = "rejected"
        duplicate_of: int | None = None
        if event is not None:
            duplicate_of = first_accepted.get(event.id)
            outcome = "accepted" if duplicate_of is None else "duplicate"
            if duplicate_of is None:
                first_accepted[event.id] = row
                if highest is None or event.id > highest:
                    highest = event.id
            if relay_to is not None:  # relays of one record keep their arrival order
                relays.append((row, relay_to, f"{event.record_type}:{event.unique_id}"))
        results.append((row, outcome, duplicate_of, http_status, reason,
                         None if event is None else tuple(event.key())))
        values.extend((
            row, received_at, outcome, http_status, _utf8(reason),
            json.dumps(event.warnings) if event and event.warnings else "[]", duplicate_of,
            _utf8(remote), method, _utf8(target), _utf8(content_type), _headers_json(headers),
            body, body_size, *_event_columns(event),
        ))
    _insert_rows(conn, values)
    known.last_row, known.max_accepted = last + len(rows), highest
    if relays:
        conn.executemany(
            "INSERT INTO relays (row, target, record_key, state) VALUES (?, ?, ?, 'pending')",
            relays,
        )
    return results


class _JSONCache(dict[tuple[tuple[str, str], ...], str]):
    """Header lists as JSON, worked out once per distinct list: a sender repeats the same
    headers, and a lookup costs a fraction of json.dumps. Bounded: a sender that varies them
    cannot grow it without end."""

    def __missing__(self, headers: tuple[tuple[str, str], ...]) -> str:
        text = json.dumps(headers)
        if len(self) >= 256:
            self.clear()
        self[headers] = text
        return text


_HEADERS_JSON = _JSONCache()


def _headers_json(headers: Any) -> str:
    return _HEADERS_JSON[tuple(headers)]


def _check(row: Row) -> tuple[AuditEvent | None, int, str | None]:
    """The event in a row's body, and the status and reason to answer it with."""
    content_type, body, status, refused = row[4], row[6], row[8], row[9]
    if refused is not None:
        return None, refused[0], refused[1]
    odd_type = content_type_warning(content_type)
    try:
        event = parse_body(body)
    except InvalidDelivery as exc:
        charset = foreign_charset(content_type) if content_type and "UTF-8" in exc.reason \
            else None
        if charset is not None:  # the sender's mistake, named
            return None, exc.status, f"{exc.reason}; it declares charset={charset}, and " \
                "deliveries are UTF-8"
        return None, exc.status, exc.reason
    if odd_type is not None:
        event = dataclasses.replace(event, warnings=(*event.warnings, odd_type))
    return event, status, None


def _event_columns(event: AuditEvent | None) -> tuple[Any, ...]:
    if event is None:
        return (None,) * 7
    return (event.id, event.action_type, event.record_type, _utf8(str(event.unique_id)),
            _utf8(event.description), _utf8(event.username), _utf8(event.action_date))


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


# How long close() waits for the writer to commit what it was sent, and how soon a writer
# that stopped is started again.
CLOSE_TIMEOUT = 60.0
RESTART_PAUSE = 1.0


class Store:
    """The receiver's way to the store: `save` hands a delivery to the writer process and
    returns once it is committed; `run` does other writes (relay outcomes) in a thread of this
    process, on a connection of its own (SQLite serialises the two writers).

    Used from one event loop at a time. `open` and `close` block; `close` waits until what
    was saved so far is committed.
    """

    def __init__(self, path: Path, *, max_pages: int | None = None, max_batch: int = 1000,
                 on_replaced: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.max_pages = max_pages
        self.max_batch = max_batch
        self.on_replaced = on_replaced
        self._jobs: ThreadPoolExecutor | None = None
        self._job_writer: Writer | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._frames = Frames()
        self._outbox = bytearray()  # sent, but not yet taken by the socket
        self._send_when_writable = False  # whether the loop calls _send once it can
        self._waiting: collections.deque[asyncio.Future[Saved]] = collections.deque()
        self._progress_at = 0.0  # the last answer, or the first delivery to wait since
        self._stopped_at = 0.0
        self._replaced_by: tuple[object, ...] | None = None  # the change said last
        # The -wal and -shm that the writer process began after copying a removed log in:
        # this process's connection lets go of the old log only then (see store.Writer).
        self._copied_log: tuple[object, ...] | None = None
        self._touches: collections.deque[asyncio.Future[None]] = collections.deque()

    def open(self) -> None:
        """Create or migrate the store, then start the writer; raises StoreError."""
        self._job_writer = Writer(self.path, self.max_pages, self._replaced,
                                  log_copied_in=self._log_copied_in)
        self._job_writer.connect()
        self._jobs = ThreadPoolExecutor(1, thread_name_prefix="ot-hook-store")
        self._start_writer()

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid while one runs (the fault tests kill it)."""
        return self._process.pid if self._process is not None else None

    def replaced(self) -> bool:
        """Whether the store's file was removed or replaced since it was last written."""
        return self._job_writer is not None and self._job_writer.replaced()

    async def follow_replacement(self) -> None:
        """Move to the file now at the store's path, when it was replaced, setting the old
        file's log aside: nothing may open the new file through it (SQLite would apply the
        old log to it, and damage it). A removed log is copied in by the writer process
        first. Raises `StoreUnavailable` when it is no store."""
        if not self.replaced():
            return
        assert self._job_writer is not None
        if self._job_writer.log_removed() and not self._log_copied_in():
            await self._touch()
        await self.run(lambda conn: None)

    def _log_copied_in(self) -> bool:
        return self._copied_log is not None and self._copied_log == log_identity(self.path)

    async def _touch(self) -> None:
        """Have the writer process run a transaction with no rows (it copies in a removed
        log when it begins one), and wait for its answer."""
        loop = self._talking()
        future: asyncio.Future[None] = loop.create_future()
        self._touches.append(future)
        self._outbox += frame([])
        self._send()
        await future

    def _replaced(self, message: str) -> None:
        if LOG_REMOVED in message:
            self._copied_log = log_identity(self.path)
        # Both writers (this process's and the writer process) notice a change, and each
        # says it once it has a log in the new place: say it once for that file and log.
        now = (message, file_identity(self.path), file_identity(Path(f"{self.path}-wal")))
        if now == self._replaced_by and now[1] is not None:
            return
        self._replaced_by = now
        if self.on_replaced is not None:
            self.on_replaced(message)

    def _start_writer(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "ot_hook.writer", str(self.path), str(theirs.fileno()),
                 str(self.max_pages or 0), str(self.max_batch)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=_child_env(),
            )
        except OSError as exc:
            ours.close()
            raise StoreError(f"cannot start the store's writer: {exc.strerror}") from None
        finally:
            theirs.close()
        ours.sendall(frame(codes.active()))  # the first frame: see the module's docstring
        ours.setblocking(False)
        self._sock = ours

    async def save(self, delivery: Delivery) -> Saved:
        """Commit `delivery` durably and say how it was stored; raises `StoreUnavailable`."""
        if self._jobs is None:
            raise StoreUnavailable("the store is closed")
        loop = self._talking()
        future: asyncio.Future[Saved] = loop.create_future()
        if not self._waiting:
            self._progress_at = time.monotonic()
        self._waiting.append(future)
        # Sent at once: the writer commits whatever has come by the time it is free (group
        # commit). Sending once per turn of the loop instead moved the connections in
        # lockstep, the loop idle while the writer committed all of them (-9% deliveries/s).
        self._outbox += frame([row_of(delivery)])
        self._send()
        return await future

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a transaction of its own, off the loop; raises `StoreUnavailable`."""
        import asyncio

        if self._jobs is None or self._job_writer is None:
            raise StoreUnavailable("the store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._jobs, self._job_writer.transaction, work)
        except (StoreError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot write the store {self.path}: {exc}") from None

    async def aclose(self) -> None:
        """`close`, in a thread: the event loop goes on (a second Ctrl-C can `kill_writer`)."""
        import asyncio

        self._detach()
        await asyncio.to_thread(self.close)

    def kill_writer(self) -> None:
        """Stop the writer at once: what it has not committed is not acknowledged (503)."""
        if self._process is not None:
            self._process.kill()

    def close(self) -> None:
        """Send what is left, let the writer commit it and stop, then close the file."""
        job = self._job_writer
        if self._jobs is not None and job is not None and job.log_removed():
            # Let go of a removed log while the writer process holds the store: closed last
            # on it, this connection would delete the new -wal. The writer process copies
            # the old log in as it stops.
            self._jobs.submit(job.close).result()
        elif self._jobs is not None and job is not None and job.replaced():
            with contextlib.suppress(StoreError, sqlite3.Error):  # see follow_replacement
                self._jobs.submit(job.connect).result()
        if self._sock is not None:
            self._finish_writer()
        if self._jobs is not None:
            self._jobs.shutdown(wait=True)
            self._jobs = None
        if self._job_writer is not None:
            self._job_writer.close()
            self._job_writer = None

    # Talking to the writer, on the event loop: non-blocking sends, answers as they come.
    def _talking(self) -> asyncio.AbstractEventLoop:
        """The running loop, listening to a writer process (started again if it stopped);
        raises StoreUnavailable."""
        import asyncio  # here: tail and prune read the store without an event loop

        if self._sock is None:
            self._restart()
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._attach(loop)
        return loop

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._detach()
        self._loop = loop
        if self._sock is not None:
            loop.add_reader(self._sock, self._on_answers)

    def _detach(self) -> None:
        if self._loop is not None and not self._loop.is_closed() and self._sock is not None:
            self._loop.remove_reader(self._sock)
            self._loop.remove_writer(self._sock)
        self._send_when_writable = False
        self._loop = None

    def _send(self) -> None:
        if self._sock is None or self._loop is None:
            return
        try:
            sent = self._sock.send(self._outbox)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._writer_stopped()
            return
        del self._outbox[:sent]
        if self._outbox and not self._send_when_writable:
            # The writer is behind: go on when the socket has room.
            self._loop.add_writer(self._sock, self._send)
            self._send_when_writable = True
        elif not self._outbox and self._send_when_writable:
            self._loop.remove_writer(self._sock)
            self._send_when_writable = False

    def _on_answers(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._writer_stopped()
            return
        for answer in self._frames.feed(data):
            self._settle(answer)

    def stalled(self) -> tuple[float, int]:
        """Seconds since the writer last answered while deliveries wait (0 when none wait),
        and how many wait."""
        if not self._waiting:
            return 0.0, 0
        return time.monotonic() - self._progress_at, len(self._waiting)

    def _settle(self, answer: Answer) -> None:
        self._progress_at = time.monotonic()
        count, saved, error, notice = answer
        if notice is not None:
            self._replaced(notice)
        if count == 0:  # the answer to a `_touch`
            if self._touches and not self._touches[0].done():
                self._touches[0].set_result(None)
            if self._touches:
                self._touches.popleft()
            return
        for index in range(count):
            future = self._waiting.popleft()
            if future.done():  # the request went away; the row is stored all the same
                continue
            if saved is None:
                future.set_exception(StoreUnavailable(error or "the store failed"))
            else:
                row, outcome, duplicate_of, status, reason, key = saved[index]
                future.set_result(Saved(row, outcome, duplicate_of, status, reason,
                                        None if key is None else EventKey(*key)))

    def _writer_stopped(self) -> None:
        """The writer died (killed, or a bug): fail what waits with a 503; the next save
        starts a new one."""
        status = self._process.poll() if self._process is not None else None
        self._detach()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._frames = Frames()
        self._outbox.clear()
        self._stopped_at = time.monotonic()
        how = "" if status is None else f" (exit status {status})"
        error = StoreUnavailable(f"the store's writer stopped{how}")
        while self._touches:
            touch = self._touches.popleft()
            if not touch.done():
                touch.set_exception(error)
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def _restart(self) -> None:
        if time.monotonic() - self._stopped_at < RESTART_PAUSE:
            raise StoreUnavailable("the store's writer stopped; starting it again")
        if self._process is not None:
            self._process.wait()
        try:
            self._start_writer()
        except StoreError as exc:
            self._stopped_at = time.monotonic()
            raise StoreUnavailable(str(exc)) from None

    def _finish_writer(self) -> None:
        """Blocking: send the rest, say there is no more, settle every answer, reap."""
        sock, process = self._sock, self._process
        assert sock is not None and process is not None
        self._detach()
        sock.settimeout(CLOSE_TIMEOUT)
        try:
            sock.sendall(self._outbox)
            self._outbox.clear()
            sock.shutdown(socket.SHUT_WR)
            while data := sock.recv(_RECV_SIZE):
                for answer in self._frames.feed(data):
                    self._settle(answer)
        except OSError:  # the writer is gone or stuck: what waits gets a 503
            process.kill()
        self._writer_stopped()
        process.wait()
        self._process = None


def _child_env() -> dict[str, str]:
    """The writer imports ot_hook from where this process did, installed or not. It gets no
    OT_HOOK_ variable: it needs none (the code tables come in its first frame), and
    OT_HOOK_PASSWORD would be readable in its /proc/PID/environ."""
    root = str(Path(ot_hook.__file__).resolve().parent.parent)
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    kept = {name: value for name, value in os.environ.items() if not name.startswith("OT_HOOK_")}
    return {**kept, "PYTHONPATH": os.pathsep.join(paths)}


class _Inbox:
    """The receiver's frames, as the writer reads them."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._frames = Frames()
        self._waiting: list[Any] = []
        self._open = True

    def _take(self, block: bool) -> bool:
        """Read what has come (waiting for something if `block`); False once nothing will."""
        try:
            data = self._sock.recv(_RECV_SIZE, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        self._open = bool(data)
        self._waiting.extend(self._frames.feed(data))
        return self._open

    def first(self) -> Any:
        while not self._waiting and self._take(block=True):
            pass
        return self._waiting.pop(0) if self._waiting else None

    def batches(self, max_batch: int) -> Iterator[list[Row]]:
        """Everything waiting, up to about `max_batch` rows at a time; waits for the first
        frame of each batch, and ends when the receiver closes its end."""
        rows: list[Row] = []
        while self._open or self._waiting or rows:
            if not rows and not self._waiting:
                self._take(block=True)
            while self._open and len(rows) + len(self._waiting) < max_batch \
                    and self._take(block=False):  # take what else has come, without waiting
                pass
            touched = any(not batch for batch in self._waiting)
            for batch in self._waiting:
                rows.extend(batch)
            self._waiting.clear()
            if rows:
                yield rows[:max_batch]
                del rows[:max_batch]
            if touched:  # the receiver asks for a transaction with no rows: see Store._touch
                yield []


def main(argv: list[str]) -> None:
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # the receiver stops it, in order
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    path, fd, max_pages, max_batch = argv
    writer = Writer(Path(path), int(max_pages) or None)
    with socket.socket(fileno=int(fd)) as sock:
        inbox = _Inbox(sock)
        tables = inbox.first()
        if tables is not None:
            codes.use(tables)
        numbering = Numbering()
        for rows in inbox.batches(int(max_batch)):
            try:
                sock.sendall(frame(commit(writer, rows, numbering)))
            except OSError:  # the receiver is gone; what it sent is committed
                break
    with contextlib.suppress(StoreError, sqlite3.Error):
        writer.connect()  # a log removed since the last batch is copied in, not lost
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1:])
