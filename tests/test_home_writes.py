"""Files written in the state directory (keys, certificates, serve.json, the password): a
write the system refuses (a full disk, a directory in the way) is one line naming the file
and the reason, and leaves nothing half-written behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ot_hook import certs, home
from ot_hook.cli import main
from tests.support import PASSWORD, USER, ot_hook_command


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("ot-hook: error: ")
    return line


def _leftovers(state: Path) -> list[str]:
    """Temporary files of _write_atomically (".name.xxxx") still there."""
    return sorted(p.name for p in state.iterdir() if p.name.startswith("."))


def test_a_directory_in_the_way_of_server_pem_is_one_line(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (state / home.SERVER_CERT).mkdir(parents=True)
    code = main(["serve", "--home", str(state), "--port", "0", "--user", USER,
                 "--password", PASSWORD])
    assert code == 1
    assert _one_line_error(capsys.readouterr().err) == (
        f"ot-hook: error: cannot write {state / home.SERVER_CERT}: Is a directory"
    )
    assert _leftovers(state) == []


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_restart_that_cannot_write_server_pem_is_one_line(state: Path) -> None:
    """The system refuses the write itself, as on a full disk: here a file size limit
    (EFBIG, "File too large") that lets the small CA files through but not server.pem."""
    local = certs.load_or_create_ca(home.ensure_home(state), None)  # as a first start left it
    certs.issue_leaf(state, local, ())
    before = (state / home.SERVER_CERT).read_bytes()
    limit = (state / home.CA_CERT).stat().st_size + 16
    assert len(before) > limit
    limited = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    result = subprocess.run(
        [sys.executable, "-c", limited, *ot_hook_command("serve", "--home", str(state),
                                                         "--port", "0")[1:]],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OT_HOOK_USER": USER,
             "OT_HOOK_PASSWORD": PASSWORD},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert _one_line_error(result.stderr) == (
        f"ot-hook: error: cannot write {state / home.SERVER_CERT}: File too large"
    )
    assert (state / home.SERVER_CERT).read_bytes() == before  # the old one, whole
    assert _leftovers(state) == []


def test_a_write_into_a_directory_that_is_gone_is_a_home_error(tmp_path: Path) -> None:
    gone = tmp_path / "gone" / home.SERVE_INFO
    with pytest.raises(home.HomeError) as caught:
        home.write_public(gone, b"{}")
    assert str(caught.value) == f"cannot write {gone}: No such file or directory"


def test_a_password_file_in_the_state_directory_that_cannot_be_read_is_one_line(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve keeps its generated password there; a directory in its place is not a crash."""
    monkeypatch.delenv("OT_HOOK_PASSWORD", raising=False)
    (state / home.PASSWORD).mkdir(parents=True)
    assert main(["serve", "--home", str(state), "--port", "0"]) == 1
    assert _one_line_error(capsys.readouterr().err) == (
        f"ot-hook: error: cannot read {state / home.PASSWORD}: Is a directory"
    )
    assert main(["send-sample", "--home", str(state)]) == 1
    assert _one_line_error(capsys.readouterr().err) == (
        f"ot-hook: error: cannot read {state / home.PASSWORD}: Is a directory"
    )


def test_a_kept_password_that_is_not_utf8_is_one_line(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OT_HOOK_PASSWORD", raising=False)
    state.mkdir()
    (state / home.PASSWORD).write_bytes(b"\xff\xfe garbage\n")
    assert main(["serve", "--home", str(state), "--port", "0"]) == 1
    assert "not UTF-8" in _one_line_error(capsys.readouterr().err)


def test_a_generated_password_never_starts_with_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'-4pio...' would pass for an option in `curl -u demo:$P` or `grep "$P"`."""
    made = iter(["-4pioYLZDyfQCa4_eN2U5KIu", "4pioYLZDyfQCa4_eN2U5KIu-"])
    monkeypatch.setattr(home.secrets, "token_urlsafe", lambda size: next(made))
    password, is_new = home.load_or_create_password(home.ensure_home(tmp_path / "state"))
    assert is_new and password == "4pioYLZDyfQCa4_eN2U5KIu-"
