"""Running the receiver: state directory, lock, certificates, store, TLS site, banner, signals.

`run(options, stderr)` is what `ot-hook serve` calls. It returns when a signal (STOP_SIGNALS)
asks it to stop, after in-flight deliveries are committed and answered and the port is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shlex
import signal
import sqlite3
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO

from aiohttp import web

from ot_hook import __version__, certs, credentials, home
from ot_hook.forwarder import DEFAULT_RETRIES, Forwarder, ForwardTarget, describe
from ot_hook.listener import PeekingTLSSite, bind
from ot_hook.receiver import (
    DEFAULT_MAX_BODY,
    Credentials,
    DeliveryHandler,
    ReceiverConfig,
    create_server,
)
from ot_hook.requestlog import StatusLog, aiohttp_errors_to
from ot_hook.sender import is_loopback
from ot_hook.store import Saved, StoreUnavailable, damage
from ot_hook.terminal import isatty
from ot_hook.textsafe import printable
from ot_hook.writer import Store

LoopChoice = Literal["auto", "asyncio", "uvloop"]
# What a sender can put in a URL as it is and the receiver's router matches exactly.
VALID_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")
# Ctrl-C, kill, and a closed terminal (SIGHUP, where the platform has it) all ask for a
# clean stop: finish and commit what is in flight, then exit 0.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
SHUTDOWN_TIMEOUT = 3.0  # in-flight deliveries get this long to finish after a stop request
WRITER_STALLED = 5.0  # seconds without an answer from the writer, while deliveries wait
WATCH_INTERVAL = 1.0
SAMPLE = (
    '{"Id": 1947, "ActionType": 4, "RecordType": 7, "UniqueId": 890, '
    '"Description": "Status Changed to Approved", "Username": "Jimmy Hendrix", '
    '"ActionDate": "2020-12-08T22:13:42.8181534Z"}'
)


class ServeError(Exception):
    """serve cannot start; the message is one line with a hint. `usage`: a bad option value."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class ServeOptions:
    home: Path
    user: str | None = None
    password: str | None = None
    password_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8443
    path: str = "/"
    max_body: int = DEFAULT_MAX_BODY
    hostnames: tuple[str, ...] = ()
    cert: Path | None = None
    key: Path | None = None
    key_type: certs.KeyType | None = None
    status_code: int = 200
    delay: float = 0.0
    # A connection that sends nothing, or stops halfway through a request, is closed after this.
    idle_timeout: float = 60.0
    quiet: bool = False
    loop: LoopChoice = "auto"
    max_store_pages: int | None = field(default=None, repr=False)  # to simulate a full disk
    forward: ForwardOptions | None = None


@dataclass(frozen=True)
class ForwardOptions:
    """serve --forward-to: where accepted deliveries are relayed, and how."""

    url: str
    user: str | None = None  # with a password: set Basic Auth; else pass the sender's through
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None
    cacert: Path | None = None
    insecure: bool = False
    retries: int = DEFAULT_RETRIES

    def target(self) -> ForwardTarget:
        from ot_hook import sender

        scheme = self.url.partition("://")[0].lower() if "://" in self.url else ""
        if scheme not in ("http", "https"):
            hint = f"; did you mean http://{self.url} ?" if not scheme else ""
            raise ServeError(f"--forward-to must be an http:// or https:// URL{hint}", usage=True)
        if "@" in self.url.partition("://")[2].partition("/")[0]:
            raise ServeError("put your app's user and password in --forward-user and "
                             "--forward-password-file, not in the URL", usage=True)
        try:
            sender.check_url(self.url, allow_http=True)
        except sender.SendError as exc:
            raise ServeError(f"--forward-to: {exc}", usage=True) from None
        if self.cacert is not None and self.insecure:
            raise ServeError("give --forward-cacert or --forward-insecure, not both",
                             usage=True)
        if self.cacert is not None and scheme == "http":
            raise ServeError("--forward-cacert is for an https:// --forward-to", usage=True)
        password = self.password
        if self.password_file is not None:
            password = credentials.read_password_file(self.password_file)
        if self.user is not None and password is None:
            raise ServeError("--forward-user needs a password: --forward-password-file or "
                             "OT_HOOK_FORWARD_PASSWORD (use '' for an empty one)", usage=True)
        if self.user is None and password is not None:
            # Else the sender's own Authorization would silently no longer be passed through.
            given = ("--forward-password-file" if self.password_file is not None
                     else "--forward-password or OT_HOOK_FORWARD_PASSWORD")
            raise ServeError(f"{given} needs --forward-user (--forward-user '' for a password "
                             "alone)", usage=True)
        authorization = None
        if self.user is not None or password is not None:
            authorization = sender.basic_authorization(self.user or "", password or "")
        context: ssl.SSLContext | bool = False
        if self.url.lower().startswith("https://") and not self.insecure:
            try:
                context = ssl.create_default_context(
                    cafile=str(self.cacert) if self.cacert else None
                )
            except (OSError, ssl.SSLError) as exc:
                raise ServeError(f"--forward-cacert {self.cacert}: {exc}") from None
        return ForwardTarget(self.url, context, authorization, self.retries)


def _same_receiver(url: str, host: str, port: int) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = (parts.hostname or "").lower()
    default = 443 if parts.scheme == "https" else 80
    host = host.strip("[]").lower()
    local = is_loopback(host) or host in ("0.0.0.0", "::", "")
    same_host = target == host or (is_loopback(target) and local)
    return same_host and (parts.port or default) == port


def url_for(host: str, port: int, path: str) -> str:
    """The https URL a client uses; IPv6 literals in brackets, wildcards as loopback."""
    host = host.removeprefix("[").removesuffix("]")
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"https://{shown}:{port}{path}"


class Receiver:
    """A running receiver, as an async context manager: entering starts everything `serve`
    needs (lock, credentials, certificates, store, TLS site, serve.json, banner); leaving stops
    accepting, lets deliveries in flight finish and commit, and frees the port.

    Raises ServeError (and HomeError, CertError, CredentialsError, StoreError) with a one-line
    message when it cannot start.
    """

    def __init__(self, options: ServeOptions, stderr: TextIO) -> None:
        self.options = options
        self._stderr = stderr
        self._exit = contextlib.ExitStack()
        self._server: web.Server | None = None
        self._runner: web.ServerRunner | None = None
        self._relaying: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self.state = options.home
        self.url = ""
        self.port = 0
        self.ca_path: Path | None = None
        self.user = ""
        self.store: Store | None = None
        self.stopped_at_once = False
        self.store_check: threading.Thread | None = None

    async def __aenter__(self) -> Receiver:
        try:
            self._start_blocking_parts()
            await self._start_site()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def _start_blocking_parts(self) -> None:
        options = self.options
        if not VALID_PATH.fullmatch(options.path):
            raise ServeError(
                f"--path must start with '/' and hold only letters, digits and - . _ ~ / "
                f"(no query, spaces or % escapes), got {options.path!r}", usage=True
            )
        if (options.cert is None) != (options.key is None):
            raise ServeError("--cert and --key go together: give both, or neither", usage=True)
        if not options.host.strip():
            raise ServeError("--host is empty: give an address such as 127.0.0.1 or 0.0.0.0",
                             usage=True)
        if any(not name.strip() for name in options.hostnames):
            raise ServeError("--hostname is empty: give a name or address for the certificate",
                             usage=True)
        for name in options.hostnames:
            if any(c.isspace() or not c.isprintable() for c in name):
                raise ServeError(f"--hostname {printable(name)!r}: a name or address has no "
                                 "spaces or control characters", usage=True)
        # Absolute, so that serve.json and the banner's curl line work from any directory.
        self.state = state = home.ensure_home(options.home.absolute())
        self._exit.enter_context(home.serve_lock(state))
        self.creds = credentials.for_serve(
            options.user, options.password, options.password_file, state
        )
        self.user = self.creds.user
        if self.creds.password == "" and not is_loopback(options.host):
            raise ServeError(
                f"an empty password on {options.host} would let anyone who can reach it "
                "deliver; set a password, or listen on 127.0.0.1"
            )
        self.local_ca: certs.LocalCA | None = None
        if options.cert is not None and options.key is not None:
            self.context = certs.server_context(options.cert, options.key)
        else:
            self.local_ca = certs.load_or_create_ca(state, options.key_type)
            self.ca_path = state / home.CA_CERT
            self.context = certs.server_context(
                certs.issue_leaf(state, self.local_ca, options.hostnames)
            )
        self.store = Store(state / home.STORE, max_pages=options.max_store_pages)
        self.store.open()
        self._exit.callback(self.store.close)
        self.log = StatusLog(self._stderr, quiet=options.quiet)
        self._exit.callback(self.log.close)
        self.store.on_replaced = lambda message: self.log.line(f"WARNING: {message}")
        self._exit.enter_context(aiohttp_errors_to(self.log))
        self.forwarder: Forwarder | None = None
        if options.forward is not None:
            self.forwarder = Forwarder(
                self.store, options.forward.target(),
                report=None if options.quiet else lambda result: self.log.line(describe(result)),
                warn=lambda text: self.log.line(f"WARNING: {text}"),
            )

    async def _start_site(self) -> None:
        options = self.options
        try:
            sock = bind(options.host, options.port)
        except OSError as exc:
            raise ServeError(_bind_error(options.host, options.port, exc)) from None
        self.port = sock.getsockname()[1]
        self.url = url_for(options.host, self.port, options.path)
        if options.forward is not None and _same_receiver(options.forward.url, options.host,
                                                          self.port):
            sock.close()
            raise ServeError("--forward-to points at this receiver itself: every relay would "
                             "come back and be relayed again", usage=True)
        assert self.store is not None  # opened by _start_blocking_parts
        server = create_server(
            self.store,
            Credentials.of(self.creds.user, self.creds.password),
            ReceiverConfig(options.path, options.max_body, options.status_code, options.delay,
                           options.idle_timeout,
                           options.forward.url if options.forward else None),
            logger=self.log.request,
            after_store=self._after_store if self.forwarder is not None else None,
            access_log=None,
            keepalive_timeout=options.idle_timeout,  # also covers half-sent request headers
            # After refusing a request, aiohttp reads the rest of its body (10 s by default),
            # so that the sender sees the answer: no longer than an idle connection is kept.
            lingering_time=min(10.0, options.idle_timeout),
        )
        self._server = server
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        site = PeekingTLSSite(self._runner, sock, self.context, self.url,
                              on_plain_http=self.log.plain_http,
                              idle_timeout=options.idle_timeout)
        await site.start()
        if self.forwarder is not None:
            self._relaying = asyncio.create_task(self.forwarder.run())
        self._watching = asyncio.create_task(watch_writer(self.store, self.log))
        home.write_serve_info(
            self.state,
            home.ServeInfo(
                url=self.url, host=options.host, port=self.port, pid=os.getpid(),
                user=self.creds.user, ca=str(self.ca_path) if self.ca_path else None,
                started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                forward_to=options.forward.url if options.forward else None,
                password_kept=options.password is None and options.password_file is None,
            ),
        )
        self._exit.callback(home.remove_serve_info, self.state, os.getpid())
        # A damaged store still takes deliveries (SQLite finds damage only on the pages it
        # touches) but tail and replay cannot read it: say so, without delaying the start.
        self.store_check = threading.Thread(target=self._check_store, name="ot-hook-check",
                                            daemon=True)
        self.store_check.start()
        self.log.line(banner(options, self.state, self.url, self.creds, self.local_ca,
                             self.ca_path, show_password=isatty(self._stderr)))

    def _after_store(self, saved: Saved, authorization: str | None) -> None:
        if self.forwarder is None or saved.outcome == "rejected":
            return
        if authorization:  # passed through to the app while we run; never stored
            self.forwarder.live_authorization[saved.row] = authorization
        self.forwarder.wake()

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._runner is not None:
                self._answer_now()
                await self._runner.cleanup()  # stop accepting, finish in-flight requests
                self._runner = None
            if self._relaying is not None:  # what is not relayed yet waits in the store
                self._relaying.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._relaying
                self._relaying = None
            if self._watching is not None:
                self._watching.cancel()
                self._watching = None
            if self.store is not None:  # in a thread, so that stop_at_once can still come
                await self.store.aclose()
        finally:
            self._exit.close()  # serve.json, store (commits what is queued), log, lock

    def _check_store(self) -> None:
        problem = damage(self.state / home.STORE)
        if problem is not None:
            self.log.line(f"WARNING: the store {self.state / home.STORE} is damaged "
                          f"({printable(problem)}): deliveries are still stored, but tail and "
                          "replay may not read them; stop serve and move the file aside")
            return
        if self.forwarder is None:
            waiting = pending_relays(self.state / home.STORE)
            if waiting:
                self.log.line(f"NOTE: {waiting} relays of an earlier --forward-to are pending; "
                              "they go out when serve runs with --forward-to again")

    def _answer_now(self) -> None:
        handler = self._server.request_handler if self._server is not None else None
        if isinstance(handler, DeliveryHandler):
            handler.answer_now()

    def stop_at_once(self) -> None:
        """A second stop signal: do not wait for a stuck writer (none of what it holds was
        answered 200)."""
        self.stopped_at_once = True
        self.log.stopping_at_once()
        if self.store is not None:
            self.store.kill_writer()
        if self._server is not None:  # a slow sender would otherwise hold the stop up
            for connection in self._server.connections:
                # abort, not close: a TLS close waits for the sender's close_notify.
                if connection.transport is not None:
                    connection.transport.abort()
                connection.force_close()


def pending_relays(path: Path) -> int:
    """How many relays wait in the store (0 when it cannot say)."""
    from ot_hook import store

    try:
        conn = store.open_for_reading(path)
    except store.StoreError:
        return 0
    try:
        return int(conn.execute("SELECT count(*) FROM relays WHERE state = 'pending'")
                   .fetchone()[0])
    except sqlite3.Error:  # a store from before serve --forward-to
        return 0
    finally:
        conn.close()


async def watch_writer(store: Store, log: StatusLog) -> None:
    """Say when the writer stops answering (a stopped process, a hung disk): the deliveries
    wait unanswered, which no request line would show until it answers or dies. And follow
    a store file removed or replaced at once, not at the next delivery (see
    `Store.follow_replacement`)."""
    warned = False
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        with contextlib.suppress(StoreUnavailable):  # not a store: said when written to
            await store.follow_replacement()
        seconds, waiting = store.stalled()
        if not warned and seconds >= WRITER_STALLED:
            waits = "1 delivery waits" if waiting == 1 else f"{waiting} deliveries wait"
            log.line(f"WARNING: the store's writer has not answered for {seconds:.0f} s; "
                     f"{waits} unanswered (a stopped process, a hung disk?)")
            warned = True
        elif warned and seconds < WRITER_STALLED:
            log.line("store: the writer answers again")
            warned = False


def run(options: ServeOptions, stderr: TextIO) -> None:
    """Serve until a stop signal comes; return once everything is stored."""

    async def serve_until_stopped() -> None:
        stop = asyncio.Event()
        # Taken before serve.json says the receiver is up: a stop signal from then on is
        # a clean stop (exit 0), not an interrupt of the start.
        _on_stop_signal(stop.set)
        async with Receiver(options, stderr) as receiver:
            await stop.wait()
            receiver.log.line("Stopping: finishing deliveries in flight "
                              "(a second Ctrl-C stops at once)...")
            _on_stop_signal(receiver.stop_at_once)
        if receiver.stopped_at_once:
            raise StoppedAtOnce
        print("Stopped.", file=stderr, flush=True)

    with _event_loop(options.loop) as runner:
        runner.run(serve_until_stopped())


class StoppedAtOnce(Exception):
    """serve was stopped by a second signal, without waiting for deliveries in flight."""


def _on_stop_signal(callback: Callable[[], object]) -> None:
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: Ctrl-C raises
            loop.add_signal_handler(signum, callback)


def _event_loop(choice: LoopChoice) -> asyncio.Runner:
    """uvloop where it is installed (it makes the receiver faster), unless told otherwise."""
    if choice == "asyncio":
        return asyncio.Runner()
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ServeError("--loop uvloop: uvloop is not installed on this platform") from None
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use; stop what uses it, or pass "
            "--port 0 to pick a free one"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: no such address on this machine"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port}; ports below 1024 need privileges"
    if isinstance(exc, OSError) and exc.errno is None:  # socket.gaierror and the like
        return f"cannot listen on {host}: {exc.strerror or exc}"
    return f"cannot listen on {host} port {port}: {exc.strerror or exc}"


def banner(
    options: ServeOptions,
    state: Path,
    url: str,
    creds: credentials.ResolvedCredentials,
    local_ca: certs.LocalCA | None,
    ca_path: Path | None,
    show_password: bool = True,
) -> str:
    lines = [f"ot-hook {__version__}: receiving Order Time deliveries"]
    lines.append(f"  URL          {url}")
    lines.append(f"  user         {creds.user}")
    if creds.generated and show_password:
        lines.append(f"  password     {creds.password}   (generated, shown once; kept in "
                     f"{state / home.PASSWORD})")
    elif creds.generated:  # stderr is a file or a journal: the password stays out of it
        lines.append(f"  password     generated, kept in {state / home.PASSWORD}")
    elif options.password is None and options.password_file is None:
        lines.append(f"  password     kept in {state / home.PASSWORD}")
    else:
        lines.append("  password     as given")
    if local_ca is not None and ca_path is not None:
        if local_ca.replaced is not None:
            lines.append(
                f"  NOTE         made a new {local_ca.key_type.value.upper()} CA in place of "
                f"the {local_ca.replaced.value.upper()} one: clients must trust it again"
            )
        elif local_ca.created:
            lines.append(f"  NOTE         made a new {local_ca.key_type.value.upper()} local CA")
        lines.append(f"  trust        {ca_path}")
        lines.append(f"  fingerprint  SHA-256 {certs.fingerprint(ca_path)}")
    else:
        lines.append(f"  certificate  {options.cert}")
    lines.append(f"  store        {state / home.STORE}")
    if options.forward is not None:
        lines.append(f"  forward to   {options.forward.url}")
    curl = ["curl"]
    if ca_path is not None:
        curl += ["--cacert", str(ca_path)]
    hidden = "****" if creds.password else ""  # an empty password has nothing to hide
    curl += ["-u", f"{creds.user}:{hidden}", "-H", "Content-Type: application/json",
             "--data-binary", SAMPLE, url]
    lines.append("  try          " + " ".join(shlex.quote(part) for part in curl))
    if hidden:
        lines.append("               (put the password in place of ****)")
    if creds.password == "":
        lines.append("  WARNING      the password is empty: whoever knows the user name gets in")
    if not is_loopback(options.host):
        lines.append(f"  WARNING      listening on {options.host}: other machines can reach this "
                     "receiver")
    lines.append("Press Ctrl-C to stop.")
    # A user name or path may hold terminal escapes: shown as text, never acted on.
    return "\n".join(printable(line) for line in lines)
