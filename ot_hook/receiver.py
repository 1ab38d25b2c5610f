"""The receiver's aiohttp server: Basic Auth, the body read within a size cap, validation,
the durable store, and the answer (which goes out only after the store has committed).

`create_server(store, credentials, ...)` builds it; `ot_hook.serve` runs it behind TLS, and
the tests run it on an ephemeral loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ot_hook import codes
from ot_hook.events import EventKey
from ot_hook.store import Delivery, Saved, StoreUnavailable
from ot_hook.textsafe import printable
from ot_hook.writer import Store

DEFAULT_MAX_BODY = 1024 * 1024
REALM_HEADER = 'Basic realm="ot-hook", charset="UTF-8"'
# Header names that may carry a secret are never stored, whatever their value ("auth" and
# "pass" cover Authorization, X-Auth, X-Custom-Pass, Password...).
SECRET_HEADER = re.compile(
    r"auth|cookie|token|secret|pass|api[-_]?key|signature|credential|session", re.IGNORECASE
)
_QUOTED_BYTES = re.compile(r"""\s*:?\s*b['"].*""", re.DOTALL)
_SECRET_HEADER_LINE = re.compile(
    rf"((?:[\w-]*(?:{SECRET_HEADER.pattern})[\w-]*)\s*:\s*)[^\r\n\\'\"]+", re.IGNORECASE
)


def without_secrets(message: str) -> str:
    """aiohttp's words for a request it could not parse, fit for a log: without the raw
    bytes it quotes (they can hold the Authorization header) and any secret header value."""
    message = _QUOTED_BYTES.sub("", message)
    return _SECRET_HEADER_LINE.sub(r"\1****", message)


@dataclass(frozen=True)
class Credentials:
    """What a sender must present, kept as UTF-8 bytes and compared in constant time."""

    user: bytes
    password: bytes

    @classmethod
    def of(cls, user: str, password: str) -> Credentials:
        return cls(user.encode(), password.encode())

    @functools.cached_property
    def _expected(self) -> str:
        return "Basic " + base64.b64encode(self.user + b":" + self.password).decode()

    def accept(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        # The usual case first: exactly the header a client builds from these credentials.
        if authorization.isascii() and hmac.compare_digest(authorization, self._expected):
            return True
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            return False
        # Split at the first colon only: the password may contain colons.
        user, sep, password = decoded.partition(b":")
        user_ok = hmac.compare_digest(user, self.user)
        password_ok = hmac.compare_digest(password, self.password)
        return bool(sep) and user_ok and password_ok


# Not frozen: on the delivery path a frozen dataclass costs about 2 us more per instance.
@dataclass(slots=True)
class RequestRecord:
    """What the request log line says about one request (never a secret)."""

    status: int
    outcome: str  # accepted, duplicate, rejected, unauthorized, not found...
    remote: str | None
    size: int
    millis: float
    event: EventKey | None = None
    row: int | None = None
    reason: str | None = None


RequestLogger = Callable[[RequestRecord], None]
# Told of each stored delivery and the Authorization it came with (kept in memory only).
AfterStore = Callable[[Saved, str | None], None]


@dataclass(frozen=True)
class ReceiverConfig:
    path: str = "/"
    max_body: int = DEFAULT_MAX_BODY
    status_code: int = 200  # what accepted and duplicate deliveries are answered with
    delay: float = 0.0  # seconds to wait before answering, after the delivery is stored
    body_timeout: float = 60.0  # a body that has not fully arrived by then is refused (408)
    relay_to: str | None = None  # serve --forward-to: accepted deliveries are queued for it


def create_server(
    store: Store,
    credentials: Credentials,
    config: ReceiverConfig | None = None,
    logger: RequestLogger | None = None,
    after_store: AfterStore | None = None,
    **server_options: Any,
) -> web.Server:
    """The receiver, as aiohttp's low-level server (run it with `web.ServerRunner`).
    `store` must already be open; the server does not close it. `server_options` go to
    aiohttp's connection handler (keepalive_timeout, access_log...)."""
    handler = DeliveryHandler(store, credentials, config or ReceiverConfig(), logger, after_store)
    # Bodies are decoded here, not by aiohttp: an encoding it cannot undo (br without Brotli,
    # zstd) would otherwise be refused before the handler, and the delivery not stored.
    return _Server(handler, auto_decompress=False, **server_options)


class _Server(web.Server):
    """aiohttp's low-level server, with connections that answer a request they cannot parse
    in words of their own."""

    def __call__(self) -> web.RequestHandler:
        # What web.Server.__call__ does, with our connection class (aiohttp has no option).
        return _Connection(self, loop=self._loop, **self._kwargs)


class _Connection(web.RequestHandler):
    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's stock page for a request that is not valid HTTP quotes the raw bytes it
        choked on, an Authorization header among them: ours names only the fault. Such a
        request is logged (one line, without secrets), never stored: it could not be read
        far enough to know who sent it."""
        # Even a garbage first line (aiohttp logs that at debug level only) is said.
        self.logger.warning("Error handling request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:  # an answer has begun: the connection is broken
            raise ConnectionError("an answer was already sent; cannot send the error")
        try:
            title = f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            title = str(status)
        fault = " ".join(without_secrets(message or "").split())
        text = f"{title}: {fault}" if fault else title
        if status == 400:
            text += " (the request is not valid HTTP/1.1, and was not stored)"
        response = _text(status, printable(text))
        response.force_close()
        return response


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers)


class DeliveryHandler:
    """Every request of the receiver: the delivery path, and a 404 or 405 for anything else.

    Not a web.Application: its router and middleware machinery cost about a tenth of the
    event loop's time per delivery (profiled at 32 connections), and one path needs neither.
    """

    def __init__(self, store: Store, credentials: Credentials, config: ReceiverConfig,
                 logger: RequestLogger | None, after_store: AfterStore | None) -> None:
        self.store = store
        self.credentials = credentials
        self.config = config
        self.log = logger or (lambda record: None)
        self.after_store = after_store
        self._stopping = asyncio.Event()

    def answer_now(self) -> None:
        """serve is stopping: deliveries held by --delay are answered at once (they are
        stored), instead of holding the stop up."""
        self._stopping.set()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        if request.path != self.config.path:
            # Logged, never stored: only the delivery path takes deliveries.
            return self._refused(started, request, 404, "not found", _text(
                404, "Not found: deliveries go to the receiver's --path."))
        if request.method != "POST":
            return self._refused(started, request, 405, "method not allowed", _text(
                405, "Send the Audit Trail object with POST.", {"Allow": "POST"}))
        offered = request.headers.getall("Authorization", ())
        # Two are refused whichever is right: which one a server reads is a guess.
        if len(offered) != 1 or not self.credentials.accept(offered[0]):
            # Never echo or keep what was offered: this request is logged, not stored.
            return self._refused(started, request, 401, "unauthorized", _text(
                401, "Authentication required.", {"WWW-Authenticate": REALM_HEADER}))
        return await self._delivery(started, request)

    def _refused(self, started: float, request: web.BaseRequest, status: int, outcome: str,
                 response: web.StreamResponse) -> web.StreamResponse:
        self.log(RequestRecord(status, outcome, request.remote, 0,
                               (time.perf_counter() - started) * 1000))
        return response

    async def _delivery(self, started: float, request: web.BaseRequest) -> web.StreamResponse:
        received_at = _utc_now()
        config = self.config
        remote = request.remote
        if request.headers.get("Expect", "").lower() == "100-continue":
            # Only now, once the sender is known: a refused one never uploads its body.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        body, body_size, refused = await _read_body(request, config.max_body,
                                                    config.body_timeout)
        encoding = request.headers.get("Content-Encoding")
        if encoding is not None and refused is None:
            body, body_size, refused = decode_body(body, encoding, config.max_body)
        transfer = request.headers.get("Transfer-Encoding")
        if transfer is not None and refused is None:
            refused = _transfer_coding_refused(transfer)
        delivery = Delivery(
            received_at=received_at,
            method=request.method,
            target=request.path_qs,
            remote=remote,
            content_type=request.headers.get("Content-Type"),
            headers=safe_headers(request),
            body=body,
            body_size=body_size,
            status=config.status_code,
            refused=refused,
            # A delivery that is itself a relay (of this or another ot-hook) is not relayed.
            relay_to=config.relay_to if config.relay_to and not _relayed(request) else None,
        )
        try:  # the writer parses and validates the body, and stores it with its outcome
            saved = await self.store.save(delivery)
        except StoreUnavailable as exc:
            # Never a 2xx for what is not stored; the serve log says why the store failed.
            self.log(RequestRecord(503, "unavailable", remote, body_size,
                                   (time.perf_counter() - started) * 1000, reason=str(exc)))
            return _text(503, "The receiver cannot store deliveries right now; try again.",
                         {"Retry-After": "5"})
        if self.after_store is not None:
            self.after_store(saved, request.headers.get("Authorization"))
        if config.delay > 0 and saved.event is not None and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(config.delay):
                    await self._stopping.wait()
        reason = saved.reason
        if request.transport is None:  # stored, but the answer will reach nobody
            reason = f"{reason}; " if reason else ""
            reason += "the sender hung up before the answer"
        self.log(RequestRecord(saved.http_status, saved.outcome, remote, body_size,
                               (time.perf_counter() - started) * 1000, saved.event, saved.row,
                               reason))
        return _text(saved.http_status, _answer(saved))


class _UtcClock:
    """Now in UTC, ISO 8601 with microseconds and Z. The date and time of day are formatted
    once a second: datetime formatting cost 2.5 us per delivery, this 0.7 us."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        second, nanos = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{nanos // 1000:06d}Z"


_utc_now = _UtcClock()


def _relayed(request: web.BaseRequest) -> bool:
    return "X-OT-Hook-Relay" in request.headers


def _answer(saved: Saved) -> str:
    if saved.outcome == "rejected":
        return f"Rejected (stored as row {saved.row}): {saved.reason}"
    if saved.outcome == "duplicate":
        return f"Duplicate of row {saved.duplicate_of} (stored as row {saved.row})."
    return f"Accepted (stored as row {saved.row})."


async def _read_body(
    request: web.BaseRequest, max_body: int, timeout: float
) -> tuple[bytes, int, tuple[int, str] | None]:
    """Read at most `max_body` bytes as they came (`decode_body` undoes any Content-Encoding)
    and keep them.

    Returns the bytes kept, how many arrived, and (status, reason) when the body is refused.
    Reading stops just past the cap, so an endless body cannot fill memory.
    """
    content = request.content
    chunks: list[bytes] = []
    size = 0
    try:
        if content.is_eof():  # the usual small delivery came whole with its headers
            chunks.append(content.read_nowait(-1))
            size = len(chunks[0])
        else:
            async with asyncio.timeout(timeout):
                while size <= max_body:
                    chunk = await content.read(max_body + 1 - size)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
    except TimeoutError:
        reason = f"the body did not arrive within {timeout:g} s ({size} bytes came)"
        return b"".join(chunks), size, (408, reason)
    except (
        HttpProcessingError, web.RequestPayloadError, ConnectionError, asyncio.IncompleteReadError
    ) as exc:
        # A body shorter than its Content-Length or broken chunking: keep what came.
        # aiohttp's own words are on the cause.
        detail = getattr(exc.__cause__, "message", None) or exc.__class__.__name__
        reason = f"the body could not be read after {size} bytes: {printable(str(detail))}"
        return b"".join(chunks), size, (400, reason)
    body = b"".join(chunks)
    if size > max_body:
        return body[:max_body], size, (413, _too_large(request, max_body))
    return body, size, None


def decode_body(
    body: bytes, encoding: str, max_body: int
) -> tuple[bytes, int, tuple[int, str] | None]:
    """Undo a Content-Encoding of gzip or deflate, keeping at most `max_body` bytes of what
    comes out (a small bomb cannot grow past it); like `_read_body`, returns the bytes kept,
    their size and (status, reason) when refused. A body that cannot be decoded is kept as
    it came."""
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return body, len(body), None
    if name not in ("gzip", "x-gzip", "deflate"):
        return body, len(body), (415, f"Content-Encoding {printable(encoding)!r} is not "
                                      "supported: send the body as it is, gzip or deflate")
    if not body:
        return body, 0, None  # nothing to decode: parsing names the empty body
    # gzip has its own header; HTTP's deflate is zlib's format, and some send raw deflate.
    formats = [16 + zlib.MAX_WBITS] if name != "deflate" else [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    problem = ""
    for wbits in formats:
        try:
            decoded, rest = _decompress(body, wbits, max_body + 1)
        except zlib.error as exc:
            problem = str(exc)
            continue
        if len(decoded) > max_body:
            return decoded[:max_body], len(decoded), (
                413, f"body larger than the limit of {max_body} bytes once decoded from "
                     f"{name} ({len(body)} bytes before); the first {max_body} bytes are kept")
        if rest is None:
            problem = "the stream is cut short"
            continue
        if rest:  # dropping them unsaid could drop part of the delivery
            return body, len(body), (400, f"the body has {len(rest)} bytes after the end of "
                                          f"its {name} stream")
        return decoded, len(decoded), None
    return body, len(body), (400, f"the body could not be decoded as {name}: {problem}")


def _decompress(data: bytes, wbits: int, limit: int) -> tuple[bytes, bytes | None]:
    """Decode `data` up to `limit` bytes, each gzip member in turn (a gzip body may hold
    several, one after another). Returns what came out and the bytes after the stream, or
    None for them when the stream is cut short. Raises zlib.error."""
    out = b""
    while True:
        decoder = zlib.decompressobj(wbits)
        out += decoder.decompress(data, limit - len(out))
        if len(out) >= limit:
            return out, b""
        if not decoder.eof:
            return out, None
        data = decoder.unused_data
        if not (wbits > zlib.MAX_WBITS and data.startswith(b"\x1f\x8b")):
            return out, data


def _transfer_coding_refused(transfer: str) -> tuple[int, str] | None:
    """aiohttp undoes only chunked: a body sent with another transfer coding (gzip,
    chunked) comes still coded, and is refused by name rather than as invalid JSON."""
    codings = [c.strip().lower() for c in transfer.split(",") if c.strip()]
    if all(coding == "chunked" for coding in codings):
        return None
    return 400, (f"Transfer-Encoding {printable(transfer)!r} is not supported: send the "
                 "body chunked or with a Content-Length (compressed: with Content-Encoding)")


def _too_large(request: web.BaseRequest, max_body: int) -> str:
    declared = request.content_length
    if declared is None:
        more = ""
    elif request.headers.get("Content-Encoding"):
        more = f" before decoding (Content-Length {declared})"
    else:
        more = f" (Content-Length {declared})"
    return (f"body larger than the limit of {max_body} bytes{more}; "
            f"the first {max_body} bytes are kept")


def safe_headers(request: web.BaseRequest) -> list[tuple[str, str]]:
    """The request headers that can be kept and shown: never Authorization, Cookie or the like."""
    return [(name, value) for name, value in request.headers.items()
            if not _SECRET_NAMES[name]]


class _SecretNames(dict[str, bool]):
    """Whether a header name may carry a secret, worked out once per name: senders repeat the
    same few names, and a dictionary hit costs a fraction of the regular expression."""

    def __missing__(self, name: str) -> bool:
        secret = SECRET_HEADER.search(name) is not None
        if len(self) < 1024:  # a sender inventing names cannot grow it without bound
            self[name] = secret
        return secret


_SECRET_NAMES = _SecretNames()


def describe(event: EventKey | None) -> str:
    """Id, decoded action and record, and UniqueId, for a log line."""
    if event is None:
        return ""
    action = codes.action_name(event.action_type) or f"ActionType {event.action_type}"
    record = codes.record_name(event.record_type) or f"RecordType {event.record_type}"
    return printable(f"Id {event.id} {action} {record} {event.unique_id}")


__all__ = ["Credentials", "ReceiverConfig", "RequestRecord", "create_server"]
