"""Sending Audit Trail deliveries over HTTPS, as Order Time would: the library under
`ot-hook send-sample`.

`target(...)` checks the URL and decides what TLS trusts (the local CA for loopback URLs, a
`--cacert`, the system store, or nothing with `--insecure`). `Sender(target, options).run(...)`
POSTs every delivery with Basic Auth, with bounded concurrency, an optional rate, a timeout and
retries, reports each `Result` as it completes and returns a `Summary`. A certificate that
fails verification stops the run with a `SendError`, because every other delivery would fail
the same way.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import ipaddress
import json
import random
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ot_hook import __version__, codes, home
from ot_hook.exitcodes import ExitCode

DEFAULT_URL = "https://127.0.0.1:8443/"
BACKOFF_FIRST = 0.25  # seconds before the first retry; doubled for each one after
BACKOFF_MAX = 8.0
RETRY_AFTER_MAX = 60.0  # a Retry-After longer than this is cut short, not obeyed blindly
# Bytes read from the start of an answer's body: only its first line is shown, and a target
# streaming gigabytes must not be held in memory. The rest is never read.
ANSWER_LIMIT = 64 * 1024


class SendError(Exception):
    """The run cannot start or go on; the message is one line, with the fix when we know it."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


class Failure(StrEnum):
    """Why a delivery did not get a 2xx, in the order that picks the exit code."""

    CONNECTION = "connection failed"
    CREDENTIALS = "credentials refused"
    TIMEOUT = "timed out"
    HTTP = "HTTP error"


EXIT_CODES = {
    Failure.CONNECTION: ExitCode.CONNECTION_FAILED,
    Failure.CREDENTIALS: ExitCode.CREDENTIALS_REFUSED,
    Failure.TIMEOUT: ExitCode.TIMED_OUT,
    Failure.HTTP: ExitCode.HTTP_ERROR,
}


# Where to send, and what to trust -----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    url: str
    authorization: str | None  # the Basic Authorization header value; None sends none
    ssl: ssl.SSLContext | bool  # False: plain http, or --insecure
    ca_file: Path | None = None  # the CA trusted, for the hint when verification fails
    local_ca: bool = False  # ca_file is the local CA of --home


def basic_authorization(user: str, password: str) -> str:
    """Built by hand: aiohttp.BasicAuth warns in 3.14, and the receiver compares UTF-8 bytes."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_http: bool = False) -> str:
    """The URL if we can send to it; a SendError (usage) naming the problem otherwise."""
    shown = re.sub(r"//[^/@]*@", "//***@", url)  # never echo a password given in the URL
    if not url.strip():  # an unset variable, say: never the default target unseen
        raise SendError("the URL is empty: give one, or leave it out for the receiver of "
                        "--home", ExitCode.USAGE)
    if "://" not in url:
        guess = f"https:{shown}" if shown.startswith("//") else f"https://{shown}"
        raise SendError(f"the URL {shown!r} has no scheme; did you mean {guess} ?",
                        ExitCode.USAGE)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port or an unclosed [IPv6
    except ValueError:
        raise SendError(f"the URL {shown!r} is not a valid URL (host or port)",
                        ExitCode.USAGE) from None
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        raise SendError(
            f"{shown} is plain HTTP, and Order Time sends only HTTPS; use https://, "
            "or pass --allow-http to send in the clear anyway", ExitCode.USAGE)
    if scheme not in ("http", "https"):
        wanted = "http:// or https://" if allow_http else "https://"
        raise SendError(f"the URL {shown!r} must start with {wanted}", ExitCode.USAGE)
    if port == 0:
        raise SendError(f"the URL {shown!r} has port 0, where nothing listens", ExitCode.USAGE)
    if not parts.hostname:
        raise SendError(f"the URL {shown!r} names no host", ExitCode.USAGE)
    full = _full_ipv4(parts.hostname)
    if full is not None:  # aiohttp refuses it at the first connection: say so now
        raise SendError(f"the URL {shown!r} writes an IPv4 address in a short form; write "
                        f"it in full, as {full}", ExitCode.USAGE)
    if parts.username is not None or parts.password is not None:
        raise SendError("put the user and password in --user and --password-file (or "
                        "OT_HOOK_USER and OT_HOOK_PASSWORD), not in the URL", ExitCode.USAGE)
    return url


def _full_ipv4(host: str) -> str | None:
    """The dotted quad for an IPv4 address in a legacy short form (127.1, 2130706433,
    0x7f.1), which the C library takes and aiohttp refuses; None for anything else."""
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return None
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return socket.inet_ntoa(packed)
    return None  # already in full


def default_url(state: Path) -> str:
    """The receiver running on `state` (its serve.json), else the default port on loopback."""
    info = home.read_serve_info(state)
    return info.url if info else DEFAULT_URL


def _context(cafile: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except FileNotFoundError:
        raise SendError(f"the CA file {cafile} does not exist", ExitCode.USAGE) from None
    except (ssl.SSLError, OSError) as exc:
        raise SendError(f"cannot use {cafile} as a CA certificate (PEM): {exc}",
                        ExitCode.USAGE) from None


def target(
    url: str,
    user: str,
    password: str,
    *,
    state: Path,
    cacert: Path | None = None,
    insecure: bool = False,
    allow_http: bool = False,
) -> Target:
    """Where and how to send. Trust: --cacert, else the local CA of `state` for a loopback
    URL, else the system's CAs; --insecure trusts anything (the CLI warns about it)."""
    check_url(url, allow_http=allow_http)
    if cacert is not None and insecure:
        raise SendError("give --cacert or --insecure, not both", ExitCode.USAGE)
    authorization = basic_authorization(user, password)
    if urlsplit(url).scheme.lower() == "http" or insecure:
        return Target(url, authorization, False)
    if cacert is not None:
        return Target(url, authorization, _context(cacert), cacert)
    host = urlsplit(url).hostname or ""
    if is_loopback(host):
        local = state / home.CA_CERT
        running = home.read_serve_info(state)
        if running is not None and running.ca is None:
            raise SendError(
                f"the receiver on {state} serves a certificate of its own (--cert): pass the "
                "CA that signed it with --cacert FILE", ExitCode.USAGE)
        if not local.exists():
            raise SendError(
                f"no local CA at {local}: start ot-hook serve with this --home, pass the --home "
                "of the receiver you send to, or --cacert FILE", ExitCode.USAGE)
        return Target(url, authorization, _context(local), local, local_ca=True)
    return Target(url, authorization, _context(None))


# What goes out, and what came back -----------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """One delivery: the exact bytes sent, and the fields shown in reports when known."""

    body: bytes
    event_id: int | None = None
    action_type: int | None = None
    record_type: int | None = None
    unique_id: int | str | None = None
    content_type: str | None = None  # None: application/json; replay keeps the original

    @classmethod
    def of(cls, body: bytes, obj: Any = None, *, content_type: str | None = None) -> Outgoing:
        """`obj` is the parsed body when the caller has it; else it is parsed, best effort."""
        if obj is None:
            try:
                obj = json.loads(body)
            except (ValueError, RecursionError):
                obj = None
        if not isinstance(obj, dict):
            return cls(body, content_type=content_type)

        def integer(name: str) -> int | None:
            value = obj.get(name)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        unique = obj.get("UniqueId")
        return cls(body, integer("Id"), integer("ActionType"), integer("RecordType"),
                   unique if isinstance(unique, (int, str)) else None, content_type)


@dataclass(frozen=True)
class Result:
    index: int
    delivery: Outgoing
    status: int | None  # None when no HTTP answer came
    failure: Failure | None
    message: str  # the first line of the answer, or what went wrong
    millis: float  # from the first attempt to the last answer
    attempts: int

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def label(self) -> str:
        """The HTTP status, or the failure when there was no answer."""
        return str(self.status) if self.status is not None else str(self.failure)

    def as_json(self) -> dict[str, Any]:
        d = self.delivery
        return {
            "index": self.index,
            "id": d.event_id,
            "action_type": d.action_type,
            "action": codes.action_name(d.action_type) if d.action_type is not None else None,
            "record_type": d.record_type,
            "record": codes.record_name(d.record_type) if d.record_type is not None else None,
            "unique_id": d.unique_id,
            "status": self.status,
            "ok": self.ok,
            "failure": str(self.failure) if self.failure else None,
            "message": self.message,
            "ms": round(self.millis, 2),
            "attempts": self.attempts,
        }


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest rank: the value below which `fraction` of the values fall."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(fraction * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class Summary:
    sent: int
    seconds: float
    by_status: dict[str, int]  # "200", "401", "connection failed"... with counts
    p50_ms: float
    p99_ms: float
    failures: dict[Failure, tuple[int, str]]  # count and first message, in exit-code order

    @classmethod
    def of(cls, results: list[Result], seconds: float) -> Summary:
        millis = sorted(r.millis for r in results)
        failures: dict[Failure, tuple[int, str]] = {}
        for kind in Failure:  # Failure's order is the exit codes' order
            failed = [r for r in results if r.failure is kind]
            if failed:
                failures[kind] = (len(failed), failed[0].message)
        by_status = Counter(r.label for r in results)
        return cls(len(results), seconds, dict(sorted(by_status.items())),
                   percentile(millis, 0.5), percentile(millis, 0.99), failures)

    @property
    def per_second(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> ExitCode:
        """OK only when every delivery got a 2xx; else the first failure in Failure's order."""
        for kind in self.failures:
            return EXIT_CODES[kind]
        return ExitCode.OK

    def lines(self) -> list[str]:
        statuses = ", ".join(f"{label} x{count}" for label, count in self.by_status.items())
        lines = [
            f"sent {self.sent} in {self.seconds:.2f} s ({self.per_second:.1f}/s)"
            + (f": {statuses}" if statuses else ""),
            f"latency p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms",
        ]
        for kind, (count, message) in self.failures.items():
            lines.append(f"{kind} x{count}: {message}")
        return lines


# Sending ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendOptions:
    concurrency: int = 1
    rate: float | None = None  # deliveries per second, over all connections
    timeout: float = 10.0  # seconds for each attempt, connection included
    retries: int = 0  # more attempts after connection errors, 429 and 5xx
    command: str = "send-sample"  # named in the User-Agent


@dataclass(frozen=True)
class _Attempt:
    status: int | None
    failure: Failure | None
    message: str
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        if self.status is None:
            return self.failure is Failure.CONNECTION  # a timeout may have been delivered
        return self.status == 429 or self.status >= 500


def failure_for(status: int) -> Failure | None:
    if 200 <= status < 300:
        return None
    return Failure.CREDENTIALS if status == 401 else Failure.HTTP


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _broke(exc: aiohttp.ClientError) -> str:
    """The error's name, and its words when they are words: a ServerDisconnectedError carries
    aiohttp's parsed message object, a dump of its internals."""
    text = str(exc).replace("[Errno None] ", "")  # an OSError made without an errno
    if not text or text.startswith("<"):
        return exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"


def backoff(attempt: int, hinted: float | None) -> float:
    """Seconds to wait before attempt `attempt + 1`: the server's Retry-After when it gave one,
    else exponential with jitter, so that many senders do not retry in step."""
    if hinted is not None:
        return min(hinted, RETRY_AFTER_MAX)
    delay: float = min(BACKOFF_FIRST * 2.0 ** (attempt - 1), BACKOFF_MAX)
    return delay * random.uniform(0.5, 1.0)


async def read_start(
    response: aiohttp.ClientResponse, limit: int = ANSWER_LIMIT
) -> tuple[bytes, bool]:
    """At most `limit` bytes from the start of the answer's body, and whether it went on.
    An answer that went on is closed, unread: its connection is never reused."""
    data = bytearray()
    while len(data) <= limit:  # one byte past the limit tells a longer answer from an equal one
        chunk = await response.content.read(limit + 1 - len(data))
        if not chunk:
            break
        data += chunk
    if len(data) <= limit:
        return bytes(data), False
    response.close()
    return bytes(data[:limit]), True


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


LONG_WAIT = 2.0  # seconds of a pause before a retry that are said on stderr


class Sender:
    def __init__(
        self,
        target: Target,
        options: SendOptions | None = None,
        on_result: Callable[[Result], None] | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.target = target
        self.options = options or SendOptions()
        self.on_result = on_result or (lambda result: None)
        self.on_wait = on_wait or (lambda text: None)  # told of a long wait before a retry
        self.results: list[Result] = []
        self._fatal: SendError | None = None
        self._host = urlsplit(target.url).hostname or ""
        self._port = urlsplit(target.url).port or (443 if target.ssl is not False else 80)

    async def run(self, deliveries: Iterable[Outgoing]) -> Summary:
        """Send every delivery; returns the summary, or raises SendError on a fatal failure."""
        options = self.options
        connector = aiohttp.TCPConnector(ssl=self.target.ssl, limit=options.concurrency)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": f"ot-hook/{__version__} {options.command}",
        }
        if self.target.authorization is not None:
            headers["Authorization"] = self.target.authorization
        started = time.perf_counter()
        async with aiohttp.ClientSession(
            connector=connector, headers=headers,
            timeout=aiohttp.ClientTimeout(total=options.timeout),
            # Receivers answer a line of text: no cookies to keep, nothing to decompress.
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
        ) as session:
            queue = enumerate(deliveries)  # shared: each worker takes the next one
            await asyncio.gather(
                *(self._work(session, queue, started) for _ in range(options.concurrency))
            )
        if self._fatal is not None:
            raise self._fatal
        return Summary.of(self.results, time.perf_counter() - started)

    async def _work(
        self, session: aiohttp.ClientSession, queue: Iterator[tuple[int, Outgoing]],
        started: float,
    ) -> None:
        rate = self.options.rate
        for index, delivery in queue:
            if self._fatal is not None:
                return
            if rate:
                await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
            try:
                result = await self._deliver(session, index, delivery)
            except SendError as exc:
                self._fatal = self._fatal or exc
                return
            self.results.append(result)
            self.on_result(result)

    async def _deliver(
        self, session: aiohttp.ClientSession, index: int, delivery: Outgoing
    ) -> Result:
        started = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            attempt = await self._attempt(session, delivery)
            if not (attempt.retryable and attempts <= self.options.retries):
                millis = (time.perf_counter() - started) * 1000
                return Result(index, delivery, attempt.status, attempt.failure,
                              attempt.message, millis, attempts)
            pause = backoff(attempts, attempt.retry_after)
            if pause >= LONG_WAIT:  # else a quiet terminal looks hung
                why = " (the server's Retry-After)" if attempt.retry_after is not None else ""
                self.on_wait(f"{attempt.status or attempt.failure}: retrying delivery "
                             f"{index + 1} in {pause:.0f} s{why}")
            await asyncio.sleep(pause)

    async def _attempt(self, session: aiohttp.ClientSession, delivery: Outgoing) -> _Attempt:
        try:
            headers = {"Content-Type": delivery.content_type} if delivery.content_type else None
            async with session.post(
                self.target.url, data=delivery.body, headers=headers, allow_redirects=False
            ) as response:
                start, _ = await read_start(response)
                text = start.decode("utf-8", "replace")
                message = _first_line(text) or (response.reason or "")
                if 300 <= response.status < 400 and "Location" in response.headers:
                    message = f"redirected to {response.headers['Location']}; send there instead"
                return _Attempt(response.status, failure_for(response.status), message,
                                retry_after(response.headers.get("Retry-After")))
        except aiohttp.ClientConnectorCertificateError as exc:
            raise SendError(self._certificate_message(exc), ExitCode.CONNECTION_FAILED) from None
        except aiohttp.ClientConnectorDNSError:
            return _Attempt(None, Failure.CONNECTION, f"cannot resolve the host {self._host!r}")
        except aiohttp.ClientConnectorSSLError as exc:
            return _Attempt(None, Failure.CONNECTION,
                            f"TLS handshake with {self._where()} failed: {_reason(exc.os_error)}"
                            " (is it an HTTPS server?)")
        except aiohttp.ClientConnectorError as exc:
            return _Attempt(None, Failure.CONNECTION, await self._connect_message(exc))
        except TimeoutError:
            return _Attempt(None, Failure.TIMEOUT,
                            f"no answer from {self.target.url} within {self.options.timeout:g} s"
                            " (--timeout)")
        except aiohttp.ClientError as exc:  # the connection broke after it was made
            return _Attempt(None, Failure.CONNECTION,
                            f"connection to {self._where()} broke: {_broke(exc)}")

    def _where(self) -> str:
        return f"{self._host} port {self._port}"

    async def _connect_message(self, exc: aiohttp.ClientConnectorError) -> str:
        tried = ", ".join(await self._addresses())
        if _is_refused(exc.os_error):
            return (f"connection refused by {self._where()} (tried {tried}): is anything "
                    "listening there?")
        return f"cannot connect to {self._where()} (tried {tried}): {_reason(exc.os_error)}"

    async def _addresses(self) -> list[str]:
        """The addresses a connection to the host tries, for the error message."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM)
        except OSError:
            return [self._host]
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def _certificate_message(self, exc: aiohttp.ClientConnectorCertificateError) -> str:
        error = exc.certificate_error
        cause = getattr(error, "verify_message", None) or str(error)
        target = self.target
        if "mismatch" in cause or "hostname" in cause:
            fix = (f"the certificate does not name {self._host}; for ot-hook serve, start it "
                   f"with --hostname {self._host}")
        elif target.local_ca:
            fix = (f"it is not signed by the local CA {target.ca_file}; pass --cacert with the "
                   "ca.pem of the receiver you send to, or that receiver's --home")
        elif target.ca_file is not None:
            fix = (f"it is not signed by {target.ca_file}; pass --cacert with the CA that signed "
                   "it (ot-hook serve prints its CA file as 'trust')")
        else:
            fix = ("pass --cacert with the CA that signed it (ot-hook serve prints its CA file "
                   "as 'trust')")
        return f"certificate verify failed for {self.target.url}: {cause}; {fix}"


def _is_refused(error: OSError) -> bool:
    # Several addresses tried (localhost: ::1 and 127.0.0.1) can come back as one OSError
    # without an errno, whose text lists each refusal.
    return isinstance(error, ConnectionRefusedError) or "Connect call failed" in str(error)


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.replace("_", " ").lower()
    return getattr(error, "strerror", None) or str(error) or error.__class__.__name__
