"""A TLS listening site for aiohttp that answers plain HTTP with a hint instead of silence.

aiohttp's TCPSite hands every connection straight to TLS, so a client that forgot the "s" in
https gets an empty reply. This site accepts connections itself, peeks at the first byte
(0x16 starts a TLS handshake) and either hands the socket to aiohttp over TLS or answers a
plain-text 400 that names the right URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

from aiohttp import web

TLS_HANDSHAKE = 0x16


def plain_http_answer(https_url: str) -> bytes:
    text = f"This endpoint speaks HTTPS only. Use {https_url}\n".encode()
    head = (
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head + text


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0 picks a free one). Raises OSError."""
    host = host.removeprefix("[").removesuffix("]")  # [::1], as written in a URL
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except UnicodeError:  # an empty label ("a..b") or one longer than 63 characters
        raise OSError("not a valid host name") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if hasattr(socket, "SO_REUSEADDR") and not hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
            # Rebind at once after a restart (TIME_WAIT), but never share a live port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class PeekingTLSSite(web.BaseSite):
    """Serve `runner` over TLS on an already bound socket, with the plain-HTTP hint."""

    __slots__ = ("_accepting", "_https_url", "_idle_timeout", "_on_plain_http", "_pending",
                 "_sock")

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        ssl_context: ssl.SSLContext,
        https_url: str,
        on_plain_http: Callable[[str | None], None] | None = None,
        idle_timeout: float = 60.0,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock
        self._https_url = https_url
        self._on_plain_http = on_plain_http
        self._idle_timeout = idle_timeout  # for the first byte, and again for the handshake
        self._accepting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self._https_url

    async def start(self) -> None:
        await super().start()
        self._accepting = asyncio.create_task(self._accept_loop())

    async def stop(self) -> None:
        """Stop accepting and free the port; connections already served finish normally."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        self._sock.close()
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        self._runner._unreg_site(self)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError:  # out of file descriptors, or a connection reset before accept
                await asyncio.sleep(0.05)
                continue
            task = asyncio.create_task(self._route(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _route(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            async with asyncio.timeout(self._idle_timeout):  # not wait_for: see forwarder.py
                await _readable(loop, conn)
            first = conn.recv(1, socket.MSG_PEEK)
        except (TimeoutError, OSError):
            conn.close()
            return
        if first and first[0] == TLS_HANDSHAKE:
            server = self._runner.server
            assert server is not None and self._ssl_context is not None
            try:
                await loop.connect_accepted_socket(
                    server, conn, ssl=self._ssl_context,
                    ssl_handshake_timeout=self._idle_timeout,
                )
            except (OSError, ssl.SSLError, TimeoutError):
                conn.close()  # a failed handshake: the client sees why on its side
            return
        if first:
            await self._answer_plain_http(loop, conn)
        conn.close()

    async def _answer_plain_http(
        self, loop: asyncio.AbstractEventLoop, conn: socket.socket
    ) -> None:
        remote = None
        with contextlib.suppress(OSError):
            remote = conn.getpeername()[0]
        if self._on_plain_http is not None:
            self._on_plain_http(remote)
        with contextlib.suppress(OSError, TimeoutError):
            conn.recv(65536)  # read the request, so closing does not reset the connection
            async with asyncio.timeout(5):
                await loop.sock_sendall(conn, plain_http_answer(self._https_url))
            conn.shutdown(socket.SHUT_WR)


def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> asyncio.Future[None]:
    future: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    loop.add_reader(fd, ready)
    future.add_done_callback(lambda _: loop.remove_reader(fd))
    return future
