"""The README's examples work: each `ot-hook` command shown is run and must not fail.

`serve` (and `serve --forward-to`) are started in the background and stopped by the test; a
following `tail` is started, given a moment, and stopped. Lines that need things a test
machine lacks (a real certificate, jq) are listed in SKIPPED with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ot_hook import home
from tests.support import recording_app

ROOT = Path(__file__).resolve().parent.parent
BIN = str(Path(sys.executable).parent)
SKIPPED = {
    "--cert fullchain.pem": "needs a real certificate for a public name",
}


def readme_commands() -> list[str]:
    """`$ ot-hook ...` lines of console blocks and `ot-hook ...` lines of sh blocks."""
    text = (ROOT / "README.md").read_text()
    after_setup = text.split("## Five minutes", 1)[1]
    commands = []
    for kind, block in re.findall(r"```(console|sh)\n(.*?)```", after_setup, re.S):
        for line in block.splitlines():
            command = line[2:] if kind == "console" and line.startswith("$ ") else line
            shown = kind == "sh" or line.startswith("$ ")
            if shown and (command.startswith(("ot-hook ", "echo ")) or "| ot-hook" in command):
                commands.append(command)
    return commands


def test_the_walk_through_shows_every_command() -> None:
    shown = " ".join(readme_commands())
    for command in ("serve", "send-sample", "tail", "decode", "replay"):
        assert f"ot-hook {command}" in shown, command


def test_readme_examples_run(tmp_path: Path) -> None:
    # The README's "your app" on localhost:3000, played by a small server on a free port.
    with recording_app() as (app_url, _):
        run_examples(tmp_path, app_url)


def run_examples(tmp_path: Path, app_url: str) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "OT_HOOK_HOME": str(tmp_path / "home"), "OT_HOOK_USER": "demo",
           "OT_HOOK_PASSWORD": "s3cret", "NO_COLOR": "1"}
    env.pop("OT_HOOK_CODES", None)
    served: subprocess.Popen[str] | None = None
    try:
        for shown in readme_commands():
            command = shown.replace("http://localhost:3000", app_url)
            if any(marker in command for marker in SKIPPED):
                continue
            if command.startswith("ot-hook serve"):
                if served is not None:
                    stop(served)
                served = start_serve(command, env, tmp_path / "home")
                continue
            if "jq" in command and shutil.which("jq") is None:
                command = command.split("|")[0]
            if command.startswith("ot-hook tail") and "--no-follow" not in command:
                follow(command, env)
                continue
            result = subprocess.run(["bash", "-c", command], env=env, capture_output=True,
                                    text=True, timeout=120)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    finally:
        if served is not None:
            stop(served)


def start_serve(command: str, env: dict[str, str], state: Path) -> subprocess.Popen[str]:
    # The README's port 8443 may be taken on a test machine: any free port will do.
    process = subprocess.Popen(["bash", "-c", f"exec {command} --port 0"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        info = home.read_serve_info(state)
        if info is not None and info.pid == process.pid:
            return process
        if process.poll() is not None:
            pytest.fail(f"{command} exited: {process.communicate()[1]}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"{command} did not start")


def follow(command: str, env: dict[str, str]) -> None:
    process = subprocess.Popen(["bash", "-c", f"exec {command}"], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 130, err


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
