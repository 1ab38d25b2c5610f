"""Where the password comes from: a flag wins over OT_HOOK_PASSWORD, two flags are refused,
and a password file's byte order mark and line ending are not part of the password."""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path

import pytest

from ot_hook import credentials
from ot_hook.cli import main
from tests.support import PASSWORD, SAMPLE, USER, basic, start_serve

BOM = "\ufeff"


def _status(port: int, ca: Path, password: str) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        connection.request("POST", "/", body=SAMPLE,
                           headers={"Authorization": basic(USER, password),
                                    "Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_password_file_wins_over_the_environment_for_serve_and_send_sample(
    tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OT_HOOK_PASSWORD exported in the shell, --password-file on the command line: the file
    is what counts, on both ends. Its BOM (Notepad's) and CRLF are not part of it."""
    secret = tmp_path / "pw"
    secret.write_bytes(f"{BOM}from-a-file\r\n".encode())
    served = start_serve(state, "--password-file", str(secret))  # OT_HOOK_PASSWORD is set
    try:
        ca = state / "ca.pem"
        assert _status(served.info.port, ca, "from-a-file") == 200
        assert _status(served.info.port, ca, PASSWORD) == 401  # the environment's
        assert _status(served.info.port, ca, f"{BOM}from-a-file") == 401
        monkeypatch.setenv("OT_HOOK_PASSWORD", "not-this-one")
        monkeypatch.setenv("OT_HOOK_USER", USER)
        code = main(["send-sample", "--home", str(state), "--password-file", str(secret)])
        assert code == 0, capsys.readouterr().err
    finally:
        assert served.stop() == 0


def test_password_and_password_file_flags_together_are_refused(
    tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    for environment in (None, "from-the-environment"):
        if environment is None:
            monkeypatch.delenv("OT_HOOK_PASSWORD", raising=False)
        else:
            monkeypatch.setenv("OT_HOOK_PASSWORD", environment)
        for command in (["serve", "--port", "0"], ["send-sample"]):
            code = main([*command, "--home", str(state), "--password", "x",
                         "--password-file", str(secret)])
            assert code == 2  # flags that contradict each other: a usage error
            err = capsys.readouterr().err
            assert err == "ot-hook: error: give either --password or --password-file, not both\n"


def test_the_environment_alone_is_still_the_password(tmp_path: Path) -> None:
    resolved = credentials.for_serve(None, credentials.FromEnvironment("env"), None, tmp_path)
    assert resolved.password == "env" and type(resolved.password) is str
    assert not resolved.generated


def test_a_library_caller_giving_both_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    with pytest.raises(credentials.CredentialsError, match="not both"):
        credentials.for_serve(None, "given", secret, tmp_path)
    with pytest.raises(credentials.CredentialsError, match="not both"):
        credentials.for_sender(None, "given", secret, tmp_path)
    from_env = credentials.FromEnvironment("env")
    assert credentials.for_serve(None, from_env, secret, tmp_path).password == "from-a-file"
    assert credentials.for_sender(None, from_env, secret, tmp_path).password == "from-a-file"


@pytest.mark.parametrize(
    ("content", "password"),
    [
        (f"{BOM}s3cret\n".encode(), "s3cret"),
        (f"{BOM}s3cret".encode(), "s3cret"),
        (f"{BOM} spaced s3cret \r\nsecond line\n".encode(), " spaced s3cret "),
        (f"{BOM}\n".encode(), ""),
        (f"s3cret{BOM}\n".encode(), f"s3cret{BOM}"),  # only a leading one is a mark
        (b"plain\n", "plain"),
    ],
)
def test_a_leading_byte_order_mark_is_not_part_of_the_password(
    tmp_path: Path, content: bytes, password: str
) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(content)
    assert credentials.read_password_file(secret) == password
