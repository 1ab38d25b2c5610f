"""`ot-hook serve` errors a new user meets: one line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ot_hook.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["serve", "--bogus"], 2, "No such option: --bogus"),
        (["serve", "--port", "http"], 2, "Invalid value for '--port'"),
        (["serve", "--port", "70000"], 2, "--port"),
        (["serve", "--key-type", "dsa"], 2, "--key-type must be ecdsa or rsa"),
        (["serve", "--loop", "trio"], 2, "--loop must be auto, asyncio or uvloop"),
    ],
)
def test_bad_flags_get_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    got, out, err = run_cli(capsys, *argv)
    assert got == code
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_missing_password_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "serve", "--home", str(tmp_path / "h"),
                           "--password-file", str(tmp_path / "nope"), "--port", "0")
    assert code == 2  # a bad flag, like decode --file naming no file
    assert err.strip() == f"ot-hook: error: password file {tmp_path / 'nope'} does not exist"


def test_home_that_is_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    code, _, err = run_cli(capsys, "serve", "--home", str(not_a_dir), "--port", "0")
    assert code == 2
    assert "--home" in err and "is a file" in err
    assert len(err.strip().splitlines()) == 1


def test_port_in_use(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli(capsys, "serve", "--home", str(tmp_path / "h"), "--port",
                               str(port), "--user", "u", "--password", "p")
    assert code == 1
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert "--port 0" in err


@pytest.mark.parametrize(("host", "reason"), [
    ("not..valid", "not a valid host name"),  # IDNA refuses an empty label
    ("a" * 64 + ".example", "not a valid host name"),
])
def test_a_host_that_is_no_name_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, host: str, reason: str
) -> None:
    code, _, err = run_cli(capsys, "serve", "--home", str(tmp_path / "h"), "--port", "0",
                           "--user", "u", "--password", "p", "--host", host)
    assert code == 1
    assert err == f"ot-hook: error: cannot listen on {host}: {reason}\n"


def test_help_and_version_need_no_network_libraries() -> None:
    probe = (
        "import sys\n"
        "from ot_hook.cli import main\n"
        "main(['serve', '--help'])\n"
        "main(['--version'])\n"
        "assert 'aiohttp' not in sys.modules and 'trustme' not in sys.modules, "
        "[m for m in sys.modules if m.startswith(('aiohttp', 'trustme'))]\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ot-hook" in result.stdout


def test_a_lock_file_that_cannot_be_written(capsys: pytest.CaptureFixture[str]) -> None:
    kernel = Path("/sys/kernel")
    if not kernel.is_dir():
        pytest.skip("no /sys/kernel here")
    code, _, err = run_cli(capsys, "serve", "--home", str(kernel), "--port", "0", "--user", "u",
                           "--password", "p")
    assert code == 1
    assert "cannot write in the state directory /sys/kernel" in err
    assert "Traceback" not in err


def test_an_empty_password_is_refused_off_loopback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, "serve", "--home", str(tmp_path / "h"), "--host", "0.0.0.0",
                           "--port", "0", "--user", "u", "--password", "")
    assert code == 1
    assert "empty password on 0.0.0.0" in err


@pytest.mark.parametrize("path", ["/hook?x=1", "/a%20b", "/my hook", "hook", "/#frag"])
def test_a_path_the_router_cannot_match_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, path: str
) -> None:
    code, _, err = run_cli(capsys, "serve", "--home", str(tmp_path / "h"), "--port", "0",
                           "--path", path, "--user", "u", "--password", "p")
    assert code == 2
    assert "--path must start with '/'" in err


def test_std_streams_closed_do_not_crash() -> None:
    closed_stdout = subprocess.run(
        [sys.executable, "-c", "import os, sys; os.close(1); from ot_hook.cli import main; "
         "sys.exit(main(['decode', '--list']))"], capture_output=True, text=True, timeout=60)
    assert closed_stdout.returncode == 0, closed_stdout.stderr
    closed_stdin = subprocess.run(
        [sys.executable, "-c", "import os, sys; os.close(0); from ot_hook.cli import main; "
         "sys.exit(main(['decode', '-']))"], capture_output=True, text=True, timeout=60)
    assert closed_stdin.returncode == 0, closed_stdin.stderr
    assert "Traceback" not in closed_stdout.stderr + closed_stdin.stderr


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://example.test/", "--forward-to must be an http:// or https:// URL"),
    ("localhost:3000/hook", "did you mean http://localhost:3000/hook"),
])
def test_a_forward_url_that_cannot_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str, message: str
) -> None:
    code, _, err = run_cli(capsys, "serve", "--home", str(tmp_path / "h"), "--port", "0",
                           "--user", "u", "--password", "p", "--forward-to", url)
    assert code == 2  # a bad option value
    assert message in err


@pytest.mark.parametrize(("extra", "message"), [
    (["--forward-to", "http://127.0.0.1:9/", "--forward-user", "x"],
     "--forward-user needs a password"),
    (["--forward-to", "http://127.0.0.1:9/", "--forward-cacert", "/etc/hostname"],
     "--forward-cacert is for an https://"),
    (["--forward-insecure"], "these go with --forward-to"),
    (["--forward-to", "http://127.0.0.1:9/", "--forward-password-file", "/etc/hostname"],
     "--forward-password-file needs --forward-user"),
    (["--forward-to", "http://127.0.0.1:9/", "--forward-password", "pw"],
     "--forward-password or OT_HOOK_FORWARD_PASSWORD needs --forward-user"),
])
def test_forward_options_that_cannot_take_effect(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, "serve", "--home", str(tmp_path / "h"), "--port", "0",
                           "--user", "u", "--password", "p", *extra)
    assert code == 2
    assert message in err


@pytest.mark.parametrize("flags", [
    ["--host", ""], ["--hostname", " "], ["--hostname", "bad\nname"], ["--hostname", "a b"],
    ["--cert", "x.pem"], ["--user", "a:b"],
    ["--status-code", "101"],  # an informational status is never a final answer
    ["--delay", "inf"],
    ["--forward-to", ""],  # an unset variable must not turn relaying off unseen
    ["--forward-to", "https://127.1:3000/"],  # aiohttp would refuse it at every relay
])
def test_bad_serve_flags_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str]
) -> None:
    code, _, err = run_cli(capsys, "serve", "--home", str(tmp_path / "h"), "--port", "0",
                           "--password", "p", *flags)
    assert code == 2 and err.count("\n") == 1
