"""The committed completion scripts are what the app generates, parse in their shells, and
complete without loading the network libraries (TAB runs the program)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"bash": "ot-hook.bash", "zsh": "_ot-hook", "fish": "ot-hook.fish",
           "powershell": "ot-hook.ps1"}
BIN = str(Path(sys.executable).parent)


def generated(shell: str) -> str:
    env = {**os.environ, "_OT_HOOK_COMPLETE": f"source_{shell}"}
    return subprocess.run([sys.executable, "-m", "ot_hook"], env=env, capture_output=True,
                          text=True, timeout=60, check=True).stdout


@pytest.mark.parametrize("shell", SCRIPTS)
def test_committed_script_is_what_the_app_generates(shell: str) -> None:
    committed = (ROOT / "completions" / SCRIPTS[shell]).read_text()
    assert committed == generated(shell), "run: sh completions/regenerate.sh"
    assert "ot-hook" in committed and "_OT_HOOK_COMPLETE" in committed


@pytest.mark.parametrize(("shell", "check"), [("bash", ["bash", "-n"]), ("zsh", ["zsh", "-n"]),
                                              ("fish", ["fish", "--no-execute"])])
def test_script_parses_in_its_shell(shell: str, check: list[str]) -> None:
    if shutil.which(check[0]) is None:
        pytest.skip(f"{check[0]} is not installed")
    result = subprocess.run([*check, str(ROOT / "completions" / SCRIPTS[shell])],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def complete_in_bash(line: str) -> list[str]:
    words = line.split(" ")
    script = (
        f"source {ROOT / 'completions' / SCRIPTS['bash']}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        "_ot_hook_completion ot-hook\n"  # bash passes the command name first

        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_and_options() -> None:
    assert {"serve", "send-sample"} <= set(complete_in_bash("ot-hook se"))
    assert "--key-type" in complete_in_bash("ot-hook serve --key")
    assert "--no-follow" in complete_in_bash("ot-hook tail --no")


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_the_fixed_values_of_options() -> None:
    assert complete_in_bash("ot-hook serve --loop ") == ["auto", "asyncio", "uvloop"]
    assert complete_in_bash("ot-hook serve --key-type r") == ["rsa"]
    assert complete_in_bash("ot-hook tail --status d") == ["duplicate"]
    assert complete_in_bash("ot-hook replay --status ") == ["accepted", "duplicate", "rejected"]
    assert complete_in_bash("ot-hook replay --relay f") == ["failed"]


def test_completion_loads_no_network_library() -> None:
    probe = (
        "import os, sys\n"
        "os.environ.update(_OT_HOOK_COMPLETE='complete_bash', COMP_WORDS='ot-hook serve --',"
        " COMP_CWORD='2')\n"
        "from ot_hook.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'trustme')]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--port" in result.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_code_names_and_scenarios() -> None:
    assert complete_in_bash("ot-hook tail --action ChangeS") == ["ChangeStatus"]
    assert "salesOrder" in complete_in_bash("ot-hook decode --record sales")  # case kept
    assert "purchaseOrder" in complete_in_bash("ot-hook send-sample --record pur")
    assert complete_in_bash("ot-hook replay --action Crea") == ["Create"]
    assert complete_in_bash("ot-hook send-sample --scenario ") == ["day", "list"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_decode_terms() -> None:
    assert complete_in_bash("ot-hook decode --list ") == ["all", "actions", "records"]
    assert complete_in_bash("ot-hook decode --list a") == ["all", "actions"]
    assert complete_in_bash("ot-hook decode ChangeS") == ["ChangeStatus"]
    assert "SalesOrder" in complete_in_bash("ot-hook decode Sal")
