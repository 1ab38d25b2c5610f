"""serve --forward-to: relay accepted deliveries to the user's own app, from the store.

The receiver queues a relay in the same commit that stores the delivery (the `relays` table),
so a restart or a crash resumes what was not relayed yet. The relay runs beside the receiver
and never touches the answer to the original sender. Relays of one record (RecordType and
UniqueId together) go out one at a time in arrival order, so a Create is never relayed after
its Change Status; a record waiting for a retry does not hold up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import sqlite3
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from ot_hook import store
from ot_hook.sender import read_start, retry_after
from ot_hook.textsafe import printable
from ot_hook.writer import Store

# Attempts after the first, for connection errors, timeouts, 429 and 5xx: with the backoff
# below, an app may be down for about five minutes before a relay is given up as failed.
DEFAULT_RETRIES = 10
BACKOFF_FIRST = 0.5  # seconds before the first retry, doubled for each one after
BACKOFF_MAX = 60.0
RETRY_AFTER_MAX = 300.0
# Sent with every relay; a receiver that gets it does not relay again, so two ot-hooks
# forwarding to each other (or one to itself through a tunnel) cannot loop.
RELAY_HEADER = "X-OT-Hook-Relay"
TIMEOUT = 10.0  # seconds for one attempt
CONCURRENCY = 8  # records relayed at once
IDLE_POLL = 1.0  # seconds between looks at the store when nothing woke us
# When an outcome cannot be recorded (the store locked or full), it is tried again after
# this long, up to RECORD_PAUSE_MAX, instead of sending the relay again.
RECORD_PAUSE = 1.0
RECORD_PAUSE_MAX = 10.0
TROUBLE_PAUSE = 5.0  # seconds before relaying again after the store could not be read


@dataclass(frozen=True)
class ForwardTarget:
    url: str
    ssl: ssl.SSLContext | bool  # False: plain http, or --forward-insecure
    authorization: str | None  # None: pass the sender's own header through (live only)
    retries: int = DEFAULT_RETRIES


@dataclass(frozen=True)
class Relay:
    row: int
    record_key: str
    attempts: int
    next_at: float
    body: bytes
    content_type: str | None


@dataclass(frozen=True)
class AttemptResult:
    """One attempt, as stored in relay_attempts and shown by tail."""

    row: int
    attempt: int
    status: int | None
    millis: float
    error: str | None
    state: str  # the relay's state after it: pending (will retry), delivered or failed
    retry_in: float | None = None


def outcome_of(
    status: int | None, attempt: int, retries: int, hinted: float | None, *,
    lasting: bool = False,
) -> tuple[str, float | None]:
    """The relay's next state, and the seconds until the next attempt when it is retried.
    `lasting`: a failure that trying again cannot mend (an untrusted certificate)."""
    if status is not None and 200 <= status < 300:
        return "delivered", None
    retryable = not lasting and (status is None or status == 429 or status >= 500)
    if not retryable or attempt > retries:
        return "failed", None
    return "pending", relay_backoff(attempt, hinted)


def relay_backoff(attempt: int, hinted: float | None) -> float:
    """Seconds before the next attempt: the app's Retry-After (within reason), else doubling
    with jitter, so that relays to an app that is down spread out over minutes."""
    if hinted is not None:
        return min(hinted, RETRY_AFTER_MAX)
    return min(BACKOFF_FIRST * 2.0 ** (attempt - 1), BACKOFF_MAX) * random.uniform(0.5, 1.0)


class Forwarder:
    """Relays what the `relays` table holds; `wake()` after each stored delivery."""

    def __init__(
        self,
        writer: Store,
        target: ForwardTarget,
        report: Callable[[AttemptResult], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self._writer = writer
        self._target = target
        self._report = report or (lambda result: None)
        self._warn = warn or (lambda text: None)
        self._trouble: str | None = None  # what stops relaying now, said once
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # by record key
        # A record whose relay finished while the pending list was being read may look
        # pending in that (stale) list: it waits for the next read instead of going twice.
        self._finishes = 0
        self._finished_at: dict[str, int] = {}  # record key -> number of its last finish
        self.live_authorization: dict[int, str] = {}  # row -> header passed through, in memory
        self._reading: tuple[int, int] | None = None  # which file the pending relays come from
        self._reading_log: tuple[object, ...] | None = None  # and which -wal and -shm

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Relay until cancelled; attempts in flight are cancelled with it and retried later."""
        loop = asyncio.get_running_loop()
        # One thread owns the read connection, so that closing it never races a read.
        reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ot-hook-relay-reads")
        reader = await loop.run_in_executor(reads, self._open_reader)
        connector = aiohttp.TCPConnector(ssl=self._target.ssl, limit=CONCURRENCY)
        try:
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT),
                auto_decompress=False,  # the answer's body is never looked at
            ) as session:
                while True:
                    self._wake.clear()
                    read_from = self._finishes
                    try:
                        path = self._writer.path
                        if store.file_identity(path) != self._reading \
                                or store.log_identity(path) != self._reading_log:
                            # Replaced (a backup moved in place), or its log removed: read
                            # the file there, once the store's writer has set the old log
                            # aside (a reader of the old log would see no new relay).
                            await self._writer.follow_replacement()
                            reader = await loop.run_in_executor(reads, self._reopen, reader)
                        due = await loop.run_in_executor(reads, pending_relays, reader)
                        next_wake = self._start_due(session, due, read_from)
                    except (store.StoreError, sqlite3.Error) as exc:
                        # Not a store now (a foreign file moved in place, a damaged one):
                        # relaying waits, and goes on by itself once it is one again.
                        self._troubled(f"relays wait: {exc}")
                        next_wake = TROUBLE_PAUSE
                    else:
                        self._troubled(None)
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
                    # the cancellation that stops serve when the event fires at that moment.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(next_wake):
                            await self._wake.wait()
        finally:
            for task in self._in_flight.values():
                task.cancel()
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
            reads.submit(reader.close)
            reads.shutdown(wait=False)

    def _troubled(self, trouble: str | None) -> None:
        if trouble is not None and trouble != self._trouble:
            self._warn(trouble)
        elif trouble is None and self._trouble is not None:
            self._warn("relays go on")
        self._trouble = trouble

    def _open_reader(self) -> sqlite3.Connection:
        reader = store.open_for_reading(self._writer.path)
        self._reading = store.file_identity(self._writer.path)
        self._reading_log = store.log_identity(self._writer.path)
        return reader

    def _reopen(self, reader: sqlite3.Connection) -> sqlite3.Connection:
        """A reader of the file that is the store now: the old file's pending relays are not
        the store's any more. Raises StoreError (the old reader is kept) when it is none."""
        fresh = self._open_reader()
        reader.close()
        return fresh

    def _start_due(
        self, session: aiohttp.ClientSession, relays: list[Relay], read_from: int
    ) -> float:
        """Start the first pending relay of each record that is due; seconds until the next.
        `read_from` is the number of finishes before `relays` was read."""
        now = time.time()
        next_wake = IDLE_POLL
        seen: set[str] = set()
        for relay in relays:  # in row order
            if relay.record_key in seen or relay.record_key in self._in_flight:
                continue  # a later relay of this record waits for the earlier one
            seen.add(relay.record_key)
            if self._finished_at.get(relay.record_key, 0) > read_from:
                continue  # finished after the read began: this row may be stale
            if relay.next_at > now:
                next_wake = min(next_wake, relay.next_at - now)
                continue
            if len(self._in_flight) >= CONCURRENCY:
                break
            task = asyncio.create_task(self._relay_safely(session, relay, self._reading))
            self._in_flight[relay.record_key] = task
            task.add_done_callback(functools.partial(self._done, relay.record_key))
        self._finished_at = {k: n for k, n in self._finished_at.items() if n > read_from}
        return max(next_wake, 0.01)

    def _done(self, record_key: str, _: object) -> None:
        self._in_flight.pop(record_key, None)
        self._finishes += 1
        self._finished_at[record_key] = self._finishes
        self._wake.set()  # the next relay of that record may go now, after a fresh read

    async def _relay_safely(self, session: aiohttp.ClientSession, relay: Relay,
                            read_in: tuple[int, int] | None) -> None:
        try:
            await self._relay(session, relay, read_in)
        except Exception as exc:  # a relays row edited into nonsense, or a bug: never spin
            self._warn(f"relay {relay.row} failed unexpectedly ({exc!r}); trying again in "
                       f"{TROUBLE_PAUSE:g} s")
            await asyncio.sleep(TROUBLE_PAUSE)  # in flight meanwhile: not started again

    async def _relay(self, session: aiohttp.ClientSession, relay: Relay,
                     read_in: tuple[int, int] | None) -> None:
        attempt = relay.attempts + 1
        headers = {RELAY_HEADER: str(relay.row)}
        if relay.content_type:
            headers["Content-Type"] = relay.content_type
        authorization = self._target.authorization or self.live_authorization.get(relay.row)
        if authorization:
            headers["Authorization"] = authorization
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        hinted: float | None = None
        lasting = False
        try:
            # Never follow a redirect: aiohttp would follow a 301 or 302 as a GET without
            # the body, and the app's 200 to that GET would count as a delivered relay.
            async with session.post(
                self._target.url, data=relay.body, headers=headers, allow_redirects=False
            ) as answer:
                # Only the status counts: once it came, a body that stalls or breaks does
                # not make the app's answer "no answer" (nor the relay go again).
                status = answer.status
                hinted = retry_after(answer.headers.get("Retry-After"))
                if 300 <= status < 400:
                    error = redirect_reason(answer.headers.get("Location"))
                elif status == 401 and not authorization:
                    error = ("sent without Authorization: the sender's is kept in memory only "
                             "(gone after a restart); give --forward-user for your app")
                try:  # the start of the body: a short answer leaves the connection for the
                    await read_start(answer)  # next relay, a long one is cut off
                except (TimeoutError, aiohttp.ClientError, OSError):
                    answer.close()
        except TimeoutError:
            error = f"no answer within {TIMEOUT:g} s"
        except aiohttp.ClientConnectorCertificateError as exc:
            lasting = True
            error = (f"certificate not trusted ({exc.certificate_error}): pass its CA with "
                     "--forward-cacert FILE, or --forward-insecure")
        except (aiohttp.ClientError, OSError) as exc:
            error = _reason(exc)
        millis = (time.perf_counter() - started) * 1000
        state, retry_in = outcome_of(status, attempt, self._target.retries, hinted,
                                     lasting=lasting)
        result = AttemptResult(relay.row, attempt, status, millis, error, state, retry_in)

        def record(conn: sqlite3.Connection) -> None:
            # A store replaced while the relay was in flight has its own row of that number
            # (another delivery, or this one still pending in a backup): leave it be.
            if store.file_identity(self._writer.path) == read_in:
                record_attempt(conn, result, self._target.url)

        pause = RECORD_PAUSE
        while True:  # the relay stays in flight meanwhile: it is not sent again
            try:
                await self._writer.run(record)
                break
            except store.StoreUnavailable as exc:
                self._warn(f"the outcome of relay {relay.row} (attempt {attempt}) cannot be "
                           f"recorded: {exc}; trying again in {pause:g} s")
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECORD_PAUSE_MAX)
        if state != "pending":
            self.live_authorization.pop(relay.row, None)
        self._report(result)


def pending_relays(reader: sqlite3.Connection, limit: int = 1000) -> list[Relay]:
    """The oldest pending relays with their bodies, in one short read transaction."""
    rows = reader.execute(
        # CAST: a value edited by hand into text reads as 0, not as a crash of the relay loop.
        "SELECT r.row, r.record_key, CAST(r.attempts AS INTEGER), CAST(r.next_at AS REAL), "
        "d.body, d.content_type "
        "FROM relays AS r JOIN deliveries AS d ON d.row = r.row "
        "WHERE r.state = 'pending' ORDER BY r.row LIMIT ?",
        (limit,),
    ).fetchall()
    return [Relay(*row) for row in rows]


def record_attempt(conn: sqlite3.Connection, result: AttemptResult, target: str) -> None:
    """The attempt, and the relay's new state; `target` is where it went (serve may have been
    started again with another --forward-to since the relay was queued)."""
    next_at = time.time() + result.retry_in if result.retry_in is not None else 0
    updated = conn.execute(
        "UPDATE relays SET state = ?, attempts = ?, next_at = ?, target = ? WHERE row = ?",
        (result.state, result.attempt, next_at, target, result.row),
    )
    if updated.rowcount == 0:  # pruned while the attempt was in flight: nothing to attach to
        return
    conn.execute(
        "INSERT INTO relay_attempts (row, attempt, attempted_at, status, millis, error, state)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (result.row, result.attempt, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
         result.status, result.millis, result.error, result.state),
    )


def redirect_reason(location: str | None) -> str:
    """Why a 3xx is a failed relay, and what to do: the relay does not guess where to go."""
    if not location:
        return "redirected without a Location; check --forward-to"
    return f"redirected to {location}; pass that address to --forward-to"


def _reason(error: BaseException) -> str:
    """One line for serve's log and the relay_attempts table."""
    if isinstance(error, aiohttp.ClientConnectorError):
        text = f"cannot connect: {error.strerror or error}"
    elif isinstance(error, aiohttp.ClientResponseError):  # aiohttp could not parse the answer
        text = f"the app's answer is not valid HTTP: {error.message}"
    else:
        text = str(error) or error.__class__.__name__
    return " ".join(text.split())


def describe(result: AttemptResult) -> str:
    """A status line for serve's log."""
    # An error may quote the app (a redirect's Location), hence printable.
    if result.status is None:
        got = printable(result.error or "no answer")
    elif result.error:
        got = f"{result.status} {printable(result.error)}"
    else:
        got = f"{result.status}"
    line = f"relay row {result.row} attempt {result.attempt}: {got} ({result.millis:.0f} ms)"
    if result.state == "pending" and result.retry_in is not None:
        return f"{line}, retrying in {result.retry_in:.1f} s"
    return f"{line}, {result.state}"

