"""A file option naming a file that is not there says it does not exist; "is a directory" is
only for a directory. (A user trial saw "is a directory" for /nonexistent: an earlier
`ot-hook serve --home /nonexistent`, run as root, had made that directory, as serve makes
its state directory.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from ot_hook.cli import main

CASES = [
    # decode's options are exists=True, dir_okay=False: Typer's own check
    (["decode", "-f", "{path}"], "missing", "file '{path}' does not exist."),
    (["decode", "-f", "{path}"], "directory", "file '{path}' is a directory."),
    (["decode", "--codes", "{path}", "4"], "missing", "file '{path}' does not exist."),
    (["decode", "--codes", "{path}", "4"], "directory", "file '{path}' is a directory."),
    # --password-file (cliutil) is dir_okay=False only: credentials says a file is missing
    (["serve", "--port", "0", "--password-file", "{path}"], "missing",
     "password file {path} does not exist"),
    (["serve", "--port", "0", "--password-file", "{path}"], "directory",
     "file '{path}' is a directory."),
    (["send-sample", "--password-file", "{path}"], "missing",
     "password file {path} does not exist"),
    (["send-sample", "-f", "{path}"], "missing",
     "cannot read --file {path}: No such file or directory"),
    (["send-sample", "-f", "{path}"], "directory", "cannot read --file {path}: Is a directory"),
]


@pytest.mark.parametrize(("argv", "kind", "expected"), CASES)
def test_a_missing_file_does_not_exist_and_a_directory_is_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    argv: list[str], kind: str, expected: str,
) -> None:
    monkeypatch.delenv("OT_HOOK_PASSWORD", raising=False)
    monkeypatch.setenv("OT_HOOK_HOME", str(tmp_path / "home"))
    path = tmp_path / "nonexistent"
    if kind == "directory":
        path.mkdir()
    code = main([arg.replace("{path}", str(path)) for arg in argv])
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert expected.replace("{path}", str(path)) in line
