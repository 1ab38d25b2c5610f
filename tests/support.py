"""Helpers the tests share: a real receiver on an ephemeral loopback port, real TLS clients,
and the store read back from disk."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import io
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from ot_hook import home, store
from ot_hook.serve import Receiver, ServeOptions

USER, PASSWORD = "demo", "s3cret"
SAMPLE = (
    b'{"Id": 1947, "ActionType": 4, "RecordType": 7, "UniqueId": 890, '
    b'"Description": "Status Changed to Approved", "Username": "Jimmy Hendrix", '
    b'"ActionDate": "2020-12-08T22:13:42.8181534Z"}'
)


def sample(event_id: int = 1947, **fields: Any) -> bytes:
    obj = json.loads(SAMPLE)
    obj["Id"] = event_id
    obj.update(fields)
    return json.dumps(obj).encode()


def options(state: Path, **overrides: Any) -> ServeOptions:
    base = ServeOptions(home=state, user=USER, password=PASSWORD, port=0, quiet=True)
    return replace(base, **overrides)


@asynccontextmanager
async def running(
    state: Path, stderr: io.StringIO | None = None, **overrides: Any
) -> AsyncIterator[Receiver]:
    """The real receiver (TLS site, store, serve.json) on 127.0.0.1 and a free port."""
    async with Receiver(options(state, **overrides), stderr or io.StringIO()) as receiver:
        yield receiver


@contextmanager
def running_in_thread(state: Path, **overrides: Any) -> Iterator[Receiver]:
    """The real receiver on an event loop of its own, for synchronous clients (hypothesis)."""
    started = threading.Event()
    stop: list[asyncio.Event] = []
    holder: list[Receiver | BaseException] = []

    async def serve() -> None:
        try:
            async with running(state, **overrides) as receiver:
                stop.append(asyncio.Event())
                holder.append(receiver)
                started.set()
                await stop[0].wait()
        except BaseException as exc:
            holder.append(exc)
            started.set()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    started.wait(30)
    receiver = holder[0]
    if isinstance(receiver, BaseException):
        raise receiver
    try:
        yield receiver
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(30)
        loop.close()


def post_sync(
    receiver: Receiver, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """One POST with the standard library's client over verified TLS."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", receiver.port, context=trusting(receiver.ca_path), timeout=30
    )
    try:
        sent = {"Authorization": basic(), **(headers or {})}
        connection.request("POST", "/", body=body, headers=sent)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def trusting(ca_path: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_path) if ca_path else None)
    return context


def basic(user: str = USER, password: str = PASSWORD) -> str:
    return aiohttp.encode_basic_auth(user, password)


@dataclass
class Answer:
    status: int
    text: str
    headers: dict[str, str]


async def post(
    receiver: Receiver,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    auth: str | None = None,
    method: str = "POST",
    path: str | None = None,
) -> Answer:
    """One request to the receiver over verified TLS, with the test credentials by default."""
    sent = {"Authorization": auth if auth is not None else basic()}
    sent.update(headers or {})
    if not sent["Authorization"]:
        del sent["Authorization"]
    url = receiver.url if path is None else receiver.url.rstrip("/") + path
    connector = aiohttp.TCPConnector(ssl=trusting(receiver.ca_path))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, url, data=body, headers=sent) as response,
    ):
        return Answer(response.status, await response.text(), dict(response.headers))


def stored(state: Path) -> list[store.StoredDelivery]:
    return list(store.iter_all(state / home.STORE))


# A receiver in a subprocess, as a user runs it --------------------------------------------


def ot_hook_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ot_hook", *args]


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    info: home.ServeInfo
    stderr: str = ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Signal the receiver, collect its stderr and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 10) -> int:
        try:
            _, self.stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise
        return self.process.returncode


def start_serve(state: Path, *args: str, env: dict[str, str] | None = None,
                new_session: bool = False) -> ServeProcess:
    """Start `ot-hook serve --port 0` and wait for its serve.json (its URL and port).
    `new_session`: in a process group of its own, as under a terminal of its own."""
    full_env = {**os.environ, "OT_HOOK_USER": USER, "OT_HOOK_PASSWORD": PASSWORD, **(env or {})}
    full_env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        ot_hook_command("serve", "--home", str(state), "--port", "0", *args),
        env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=new_session,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = home.read_serve_info(state)
        if info is not None and info.pid == process.pid:
            return ServeProcess(process, info)
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"serve exited {process.returncode}: {err}")
        time.sleep(0.05)
    process.kill()
    process.communicate()
    raise AssertionError("serve did not write serve.json in 30 s")


# The user's own app, for forwarding and replay -------------------------------------------


@dataclass
class Recorded:
    path: str
    body: bytes
    headers: dict[str, str]


@contextmanager
def recording_app(statuses: list[int] | None = None) -> Iterator[tuple[str, list[Recorded]]]:
    """A plain-HTTP app on a free loopback port that records each POST and answers with the
    next of `statuses` (then 200). Yields its base URL and the list it records into."""
    received: list[Recorded] = []
    answers = list(statuses or [])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(Recorded(self.path, body, dict(self.headers.items())))
            self.send_response(answers.pop(0) if answers else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http_app(Handler) as url:
        yield url.rstrip("/"), received


@contextmanager
def http_app(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` served over plain HTTP on a free loopback port, in a thread; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def back_up(state: Path) -> Path:
    """A backup of the store beside the state directory, made with SQLite's backup API (as
    `sqlite3 events.db .backup` makes one) while serve runs."""
    backup = state.parent / "backup.db"
    source = sqlite3.connect(f"file:{state / home.STORE}?mode=ro", uri=True)
    target = sqlite3.connect(backup)
    source.backup(target)
    source.close()
    target.close()
    return backup
