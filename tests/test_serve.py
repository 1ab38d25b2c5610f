"""`ot-hook serve` as a user runs it: certificates, state directory, curl, signals."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from ot_hook import certs, home
from ot_hook.listener import bind
from ot_hook.serve import Receiver, ServeError, url_for
from tests.support import (
    PASSWORD,
    SAMPLE,
    USER,
    basic,
    options,
    post,
    running,
    sample,
    start_serve,
    stored,
)

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args],
                          capture_output=True, text=True, timeout=20)


async def test_state_directory_holds_the_promised_files_privately(state: Path) -> None:
    async with running(state) as receiver:
        info = home.read_serve_info(state)
        assert info is not None
        assert (info.url, info.port, info.pid) == (receiver.url, receiver.port, os.getpid())
        assert info.ca == str(state / "ca.pem")
    for name in ("ca.pem", "ca-key.pem", "server.pem", "events.db"):
        assert (state / name).exists(), name
    for private in ("ca-key.pem", "server.pem", "events.db"):
        assert stat.S_IMODE((state / private).stat().st_mode) == 0o600, private
    assert not (state / "serve.json").exists(), "serve.json names only a running receiver"


async def test_the_ca_is_reused_across_restarts(state: Path) -> None:
    async with running(state) as first:
        assert (await post(first, sample(1))).status == 200
    ca_before = (state / "ca.pem").read_bytes()
    async with running(state) as second:
        assert (state / "ca.pem").read_bytes() == ca_before
        assert (await post(second, sample(2))).status == 200  # trusted with the same ca.pem
    assert len(stored(state)) == 2


async def test_key_type_is_kept_unless_another_is_asked_for(state: Path) -> None:
    async with running(state, key_type=certs.KeyType.RSA) as receiver:
        assert receiver.local_ca is not None and receiver.local_ca.created
        assert (await post(receiver, SAMPLE)).status == 200
    rsa_ca = (state / "ca.pem").read_bytes()
    async with running(state) as receiver:  # no --key-type: the RSA CA stays
        assert receiver.local_ca is not None and not receiver.local_ca.created
        assert receiver.local_ca.key_type is certs.KeyType.RSA
    assert (state / "ca.pem").read_bytes() == rsa_ca
    async with running(state, key_type=certs.KeyType.ECDSA) as receiver:
        assert receiver.local_ca is not None
        assert receiver.local_ca.replaced is certs.KeyType.RSA
        assert (await post(receiver, SAMPLE)).status == 200
    assert (state / "ca.pem").read_bytes() != rsa_ca


async def test_leaf_covers_loopback_names_and_extra_hostnames(state: Path) -> None:
    async with running(state, hostnames=("ordertime.test",)) as receiver:
        context = ssl.create_default_context(cafile=str(state / "ca.pem"))
        for name in ("localhost", "127.0.0.1", "ordertime.test"):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", receiver.port, ssl=context, server_hostname=name
            )
            writer.close()
            await writer.wait_closed()
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", receiver.port, ssl=context,
                                          server_hostname="elsewhere.test")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_tls_below_1_2_is_refused(receiver: Receiver, state: Path) -> None:
    assert receiver.context.minimum_version == ssl.TLSVersion.TLSv1_2
    context = ssl.create_default_context(cafile=str(state / "ca.pem"))
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.open_connection("127.0.0.1", receiver.port, ssl=context,
                                      server_hostname="localhost")


@pytest.mark.parametrize("fault", ["encrypted", "empty", "device"])
async def test_a_key_that_cannot_be_used_is_one_line_never_a_passphrase_prompt(
    tmp_path: Path, state: Path, fault: str
) -> None:
    from cryptography.hazmat.primitives import serialization

    leaf = trustme.CA().issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    private = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    key.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    if fault == "empty":
        key.write_bytes(b"")
    if fault == "device":
        key = Path("/dev/null")
    expected = {"encrypted": "is protected by a passphrase", "empty": "it is empty",
                "device": "not a regular file"}[fault]
    with pytest.raises(certs.CertError, match=expected):
        async with running(state, cert=cert, key=key):
            pass


async def test_own_certificate_and_key_are_served(tmp_path: Path, state: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "their-ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_file))
    async with running(state, cert=cert, key=key) as receiver:
        assert receiver.ca_path is None
        receiver.ca_path = ca_file  # the test client trusts their CA, not ours
        assert (await post(receiver, SAMPLE)).status == 200
    assert not (state / "ca.pem").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cert": Path("/nonexistent/cert.pem"), "key": Path("/nonexistent/key.pem")},
         "cannot read /nonexistent/cert.pem"),
        ({"cert": Path("/nonexistent/cert.pem")}, "--cert and --key go together"),
        ({"path": "hook"}, "--path must start with '/'"),
    ],
)
async def test_bad_options_fail_with_one_line(
    state: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(Exception, match=message) as info:
        async with Receiver(options(state, **overrides), io.StringIO()):
            pass
    assert "\n" not in str(info.value)


async def test_a_port_in_use_gets_a_hint(state: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = f"port {port} on 127.0.0.1 is already in use.*--port 0"
        with pytest.raises(ServeError, match=in_use):
            async with Receiver(options(state, port=port), io.StringIO()):
                pass
    assert home.read_serve_info(state) is None


async def test_a_second_serve_on_the_same_home_is_refused(state: Path) -> None:
    async with running(state) as first:
        with pytest.raises(home.AlreadyRunning, match=f"pid {os.getpid()}, {first.url}"):
            async with running(state):
                pass
        assert (await post(first, SAMPLE)).status == 200


async def test_without_credentials_a_password_is_generated_and_kept(state: Path) -> None:
    async with running(state, user=None, password=None) as receiver:
        assert receiver.creds.generated
        generated = receiver.creds.password
        answer = await post(receiver, SAMPLE, auth=basic(home.DEFAULT_USER, generated))
        assert answer.status == 200
    assert stat.S_IMODE((state / "password").stat().st_mode) == 0o600
    async with running(state, user=None, password=None) as again:
        assert not again.creds.generated
        assert again.creds.password == generated


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_a_generated_password_is_shown_on_a_terminal_only(state: Path) -> None:
    """A log file or a journal keeps what stderr says: the password stays in its 0600 file."""
    to_file = io.StringIO()
    async with running(state, stderr=to_file, user=None, password=None) as receiver:
        generated = receiver.creds.password
    assert generated not in to_file.getvalue()
    assert f"generated, kept in {state / 'password'}" in to_file.getvalue()
    (state / "password").unlink()
    on_terminal = _Terminal()
    async with running(state, stderr=on_terminal, user=None, password=None) as receiver:
        generated = receiver.creds.password
    assert f"password     {generated}" in on_terminal.getvalue()


async def test_banner_names_url_ca_fingerprint_and_curl_but_not_the_password(state: Path) -> None:
    err = io.StringIO()
    async with Receiver(options(state, password="hunter2-secret"), err) as receiver:
        pass
    banner = err.getvalue()
    assert receiver.url in banner
    assert str(state / "ca.pem") in banner
    assert certs.fingerprint(state / "ca.pem") in banner
    assert f"curl --cacert {state / 'ca.pem'} -u 'demo:****'" in banner
    assert "hunter2-secret" not in banner


async def test_the_banner_shows_escapes_in_a_user_name_as_text(state: Path) -> None:
    err = io.StringIO()
    async with Receiver(options(state, user="d\x1b[31me"), err):
        pass
    assert "\x1b" not in err.getvalue()
    assert "user         d\\x1b[31me" in err.getvalue()


def test_url_for_brackets_ipv6_and_shows_wildcards_as_loopback() -> None:
    assert url_for("::1", 8443, "/") == "https://[::1]:8443/"
    assert url_for("0.0.0.0", 1, "/hook") == "https://127.0.0.1:1/hook"
    assert url_for("::", 2, "/") == "https://[::1]:2/"


# As a subprocess, the way a user runs it ---------------------------------------------------


@needs_curl
def test_curl_with_cacert_succeeds_and_plain_curl_fails_verification(state: Path) -> None:
    served = start_serve(state)
    try:
        url = served.info.url
        ok = curl("--cacert", str(state / "ca.pem"), "-u", f"{USER}:{PASSWORD}",
                  "--data-binary", SAMPLE.decode(), url)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("Accepted")
        refused = curl("-u", f"{USER}:{PASSWORD}", "--data-binary", SAMPLE.decode(), url)
        assert refused.returncode == 60, refused  # curl: peer certificate cannot be verified
        plain = curl("-u", f"{USER}:{PASSWORD}", "--data-binary", "{}",
                     url.replace("https://", "http://"))
        assert "speaks HTTPS only" in plain.stdout
        assert url in plain.stdout
    finally:
        assert served.stop() == 0
    [row] = stored(state)
    assert row.body == SAMPLE


@needs_curl
def test_expect_100_continue_is_answered_once_the_sender_is_known(state: Path) -> None:
    served = start_serve(state)
    try:
        # Were the 100 never sent, curl would wait 30 s for it and hit --max-time 10.
        expect = ("-v", "--expect100-timeout", "30", "-H", "Expect: 100-continue",
                  "--cacert", str(state / "ca.pem"), "--data-binary", SAMPLE.decode())
        ok = curl(*expect, "-u", f"{USER}:{PASSWORD}", served.info.url)
        assert ok.returncode == 0, ok.stderr
        assert "HTTP/1.1 100 Continue" in ok.stderr
        assert ok.stdout.startswith("Accepted")
        refused = curl(*expect, "-u", f"{USER}:wrong", served.info.url)
        assert "HTTP/1.1 401" in refused.stderr
        assert "100 Continue" not in refused.stderr  # a refused sender never uploads the body
    finally:
        assert served.stop() == 0
    assert [row.event_id for row in stored(state)] == [1947]


@needs_curl
def test_password_from_a_file_keeps_it_off_the_command_line(tmp_path: Path, state: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    served = start_serve(state, "--password-file", str(secret), env={"OT_HOOK_PASSWORD": ""})
    try:
        result = curl("--cacert", str(state / "ca.pem"), "-u", f"{USER}:from-a-file",
                      "--data-binary", SAMPLE.decode(), served.info.url)
        assert result.stdout.startswith("Accepted"), result
    finally:
        served.stop()


def test_sigterm_stops_cleanly_with_every_acknowledged_delivery_stored(state: Path) -> None:
    served = start_serve(state)
    acknowledged: list[int] = []

    async def send_until_stopped() -> None:
        import aiohttp

        context = ssl.create_default_context(cafile=str(state / "ca.pem"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as s:

            async def one(event_id: int) -> None:
                try:
                    async with s.post(served.info.url, data=sample(event_id),
                                      headers={"Authorization": basic()}) as response:
                        if response.status == 200:
                            acknowledged.append(event_id)
                            if len(acknowledged) == 20:
                                some_answered.set()
                except aiohttp.ClientError:
                    pass  # refused or cut off by the stop: not acknowledged, may not be stored

            some_answered = asyncio.Event()
            tasks = [asyncio.create_task(one(n)) for n in range(1, 201)]
            await asyncio.wait_for(some_answered.wait(), 20)
            served.process.send_signal(signal.SIGTERM)  # while the rest are in flight
            await asyncio.gather(*tasks)

    asyncio.run(send_until_stopped())
    assert served.wait() == 0
    assert acknowledged, "some deliveries should have been answered before the stop"
    kept = {row.event_id for row in stored(state)}
    assert set(acknowledged) <= kept
    assert home.read_serve_info(state) is None
    bind("127.0.0.1", served.info.port).close()  # a new receiver can listen there at once
    assert "Traceback" not in served.stderr
    assert PASSWORD not in served.stderr


def test_sigint_stops_with_exit_0(state: Path) -> None:
    served = start_serve(state)
    assert served.stop(signal.SIGINT) == 0


def test_a_closed_terminal_sighup_stops_cleanly_writer_too(state: Path) -> None:
    """Closing the terminal sends SIGHUP to the whole process group: serve and its writer."""
    served = start_serve(state, new_session=True)
    connection = http.client.HTTPSConnection(
        "127.0.0.1", served.info.port, timeout=30,
        context=ssl.create_default_context(cafile=str(state / "ca.pem")))
    connection.request("POST", "/", body=sample(7), headers={"Authorization": basic()})
    assert connection.getresponse().status == 200
    connection.close()
    os.killpg(served.process.pid, signal.SIGHUP)
    assert served.wait() == 0
    assert "Stopping" in served.stderr and "Traceback" not in served.stderr
    with pytest.raises(ProcessLookupError):  # nothing of the group is left behind
        for _ in range(100):
            os.killpg(served.process.pid, 0)
            time.sleep(0.05)
    assert [row.event_id for row in stored(state)] == [7]


async def test_an_empty_password_works_with_a_warning(state: Path) -> None:
    err = io.StringIO()
    async with Receiver(options(state, password=""), err) as receiver:
        assert (await post(receiver, SAMPLE, auth=basic(USER, ""))).status == 200
        assert (await post(receiver, SAMPLE, auth=basic(USER, "x"))).status == 401
    assert "the password is empty" in err.getvalue()
    assert f"-u {USER}: " in err.getvalue()  # a curl line that works as it is
    assert "****" not in err.getvalue()


async def test_a_relative_home_is_written_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with running(Path("rel")) as receiver:
        info = home.read_serve_info(tmp_path / "rel")
        assert info is not None and info.ca == str(tmp_path / "rel" / "ca.pem")
        assert receiver.ca_path == tmp_path / "rel" / "ca.pem"


async def test_malformed_http_is_one_line_on_the_console(state: Path) -> None:
    err = io.StringIO()
    async with Receiver(options(state, quiet=False), err) as receiver:
        context = ssl.create_default_context(cafile=str(receiver.ca_path))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", receiver.port, ssl=context, server_hostname="localhost")
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: two\r\n\r\n{}")
        assert (await reader.read()).startswith(b"HTTP/1.0 400")
        writer.close()
        for _ in range(100):
            if "Error handling request" in err.getvalue():
                break
            await asyncio.sleep(0.02)
    lines = [line for line in err.getvalue().splitlines() if "Error handling" in line]
    assert len(lines) == 1 and "Content-Length" in lines[0]
    assert "Traceback" not in err.getvalue()


AUTH_LINE = b"Authorization: " + basic().encode()


@pytest.mark.parametrize(("request_bytes", "named"), [
    # Bare LF line endings: aiohttp refuses the request line and quotes what came.
    (b"POST / HTTP/1.1\nHost: x\nAuthorization: " + basic().encode()
     + b"\nX-Api-Key: k3y-value\nContent-Length: 2\n\n{}", "BadStatusLine"),
    # A control character in the Authorization header: aiohttp quoted that header whole.
    (b"POST / HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE + b"\x01\r\nContent-Length: 2\r\n\r\n{}",
     "Invalid header value char"),
    (b"POST / HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE
     + b"\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", "Duplicate Content-Length"),
    (b"GARBAGE\r\n\r\n", "BadHttpMethod"),  # aiohttp logs this one at debug level only
], ids=["bare-lf", "control-char-in-authorization", "two-content-lengths", "garbage"])
async def test_a_request_aiohttp_cannot_parse_is_answered_and_logged_without_secrets(
    state: Path, request_bytes: bytes, named: str
) -> None:
    err = io.StringIO()
    async with Receiver(options(state, quiet=False), err) as receiver:
        context = ssl.create_default_context(cafile=str(receiver.ca_path))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", receiver.port, ssl=context, server_hostname="localhost")
        writer.write(request_bytes)
        answer = await reader.read()
        writer.close()
        for _ in range(100):
            if "Error handling request" in err.getvalue():
                break
            await asyncio.sleep(0.02)
    log = err.getvalue()
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    body = answer.partition(b"\r\n\r\n")[2].decode()
    assert body.startswith("400 Bad Request") and "was not stored" in body
    assert named in log and log.count("Error handling request") == 1
    for secret in (basic().split()[1], PASSWORD, "k3y-value"):
        assert secret not in log and secret not in body
    assert stored(state) == []


async def test_an_ipv6_host_may_be_written_in_brackets(state: Path) -> None:
    async with running(state, host="[::1]") as receiver:
        assert receiver.url.startswith("https://[::1]:")
        assert (await post(receiver, SAMPLE)).status == 200


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
async def test_the_writer_process_is_not_given_the_password(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OT_HOOK_PASSWORD", "env-secret-12345")
    monkeypatch.setenv("OT_HOOK_FORWARD_PASSWORD", "forward-secret-678")
    async with running(state) as receiver:
        assert (await post(receiver, SAMPLE)).status == 200
        pid = receiver.store.writer_pid
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"PYTHONPATH=" in environ
    assert b"env-secret-12345" not in environ
    assert b"forward-secret-678" not in environ


def test_a_second_signal_stops_at_once_when_the_writer_is_stuck(state: Path) -> None:
    """The first stop waits for the writer to commit what is in flight; a writer that cannot
    (stopped, a hung disk) must not make serve unstoppable for a minute."""
    served = start_serve(state)
    children = Path(f"/proc/{served.process.pid}/task/{served.process.pid}/children")
    [writer] = [int(pid) for pid in children.read_text().split()]
    context = ssl.create_default_context(cafile=str(state / "ca.pem"))

    def deliver(event_id: int, timeout: float) -> int:
        connection = http.client.HTTPSConnection("127.0.0.1", served.info.port,
                                                 timeout=timeout, context=context)
        try:
            connection.request("POST", "/", body=sample(event_id),
                               headers={"Authorization": basic()})
            return connection.getresponse().status
        finally:
            connection.close()

    assert deliver(1, 30) == 200
    os.kill(writer, signal.SIGSTOP)
    try:
        stuck = threading.Thread(target=lambda: _swallow(deliver, 2, 10), daemon=True)
        stuck.start()
        time.sleep(0.5)  # the delivery is with the stopped writer
        served.process.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert served.process.poll() is None  # waiting for the writer, as it should
        served.process.send_signal(signal.SIGTERM)
        assert served.wait(timeout=10) == 130
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed, as it should be
            os.kill(writer, signal.SIGCONT)
    assert "Stopping at once" in served.stderr and "Traceback" not in served.stderr
    assert "STORE FAILING" not in served.stderr  # the writer was stopped on purpose
    assert home.read_serve_info(state) is None
    assert stored(state)[0].event_id == 1


def _swallow(function: Any, *args: Any) -> None:
    with contextlib.suppress(OSError, http.client.HTTPException):
        function(*args)


def test_a_stop_answers_deliveries_held_by_delay_at_once(state: Path) -> None:
    # --delay holds the answer to a stored delivery; a stop must not wait it out (30 s here).
    served = start_serve(state, "--delay", "30")
    context = ssl.create_default_context(cafile=str(state / "ca.pem"))
    statuses: list[int] = []

    def deliver() -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", served.info.port,
                                                 timeout=20, context=context)
        try:
            connection.request("POST", "/", body=sample(1), headers={"Authorization": basic()})
            statuses.append(connection.getresponse().status)
        finally:
            connection.close()

    held = threading.Thread(target=deliver, daemon=True)
    held.start()
    for _ in range(500):
        if stored(state):
            break
        time.sleep(0.02)
    assert stored(state) and not statuses  # stored, and held
    served.process.send_signal(signal.SIGTERM)
    held.join(timeout=20)
    assert statuses == [200]
    assert served.wait(timeout=10) == 0


def test_a_second_signal_does_not_wait_for_a_slow_sender(state: Path) -> None:
    """The first stop gives a sender that is still uploading a few seconds; the second one
    closes its connection at once."""
    served = start_serve(state)
    context = ssl.create_default_context(cafile=str(state / "ca.pem"))
    with socket.create_connection(("127.0.0.1", served.info.port)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as slow:
        slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic().encode()
                     + b"\r\nContent-Length: 500\r\n\r\n{\"Id\": ")
        time.sleep(0.5)  # the receiver is reading the body
        served.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert served.process.poll() is None  # the first stop waits for the sender
        served.process.send_signal(signal.SIGTERM)
        # serve gives in-flight deliveries 3 s after the first stop; at once is well under.
        assert served.wait(timeout=1.5) == 130
    assert "Traceback" not in served.stderr


async def test_the_log_says_when_a_sender_hung_up_before_its_answer(state: Path) -> None:
    # --delay exists to try a sender's timeout: the log must not read as if the 200 arrived.
    err = io.StringIO()
    async with Receiver(options(state, quiet=False, delay=2.0), err) as receiver:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await post(receiver, SAMPLE)
        for _ in range(200):
            if "200 accepted" in err.getvalue():
                break
            await asyncio.sleep(0.02)
        assert (await post(receiver, sample(2))).status == 200  # one that waits gets it
    [hung_up, waited] = [line for line in err.getvalue().splitlines() if " 200 " in line]
    assert "(the sender hung up before the answer)" in hung_up
    assert "hung up" not in waited
    assert len(stored(state)) == 2
