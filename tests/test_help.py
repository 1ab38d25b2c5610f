"""Every command and option explains itself, and each command's help ends with examples."""

from __future__ import annotations

import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer

from ot_hook.cli import app, main

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)  # type: ignore[attr-defined]


def test_the_commands_the_design_promises_are_there() -> None:
    assert {"serve", "send-sample", "tail", "decode", "prune"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_and_every_option_have_help(name: str) -> None:
    command = GROUP.commands[name]  # type: ignore[attr-defined]
    assert command.help, f"{name} has no help"
    missing = [param.name for param in command.params
               if not getattr(param, "help", None) and param.name != "help"]
    assert not missing, f"{name}: no help for {missing}"


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_ends_with_examples(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    command = GROUP.commands[name]  # type: ignore[attr-defined]
    assert command.epilog and command.epilog.startswith("Examples:"), name
    examples = [line for line in command.epilog.splitlines() if "ot-hook " in line]
    assert 2 <= len(examples) <= 3, examples
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out
    assert out.rstrip().splitlines()[-1].strip().startswith("ot-hook ")


def test_ctrl_c_while_still_importing_is_exit_130_not_a_traceback() -> None:
    # Ctrl-C in the first tenth of a second lands in `import typer`: make it land there.
    script = (
        "import builtins, sys\n"
        "real_import = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'typer':\n"
        "        raise KeyboardInterrupt\n"
        "    return real_import(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupted\n"
        "sys.argv = ['ot-hook', 'decode', '4']\n"
        "from ot_hook.launch import main\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "")


def test_the_script_and_python_m_start_through_the_guard() -> None:
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["ot-hook"] == "ot_hook.launch:main"
    done = subprocess.run([sys.executable, "-m", "ot_hook", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("ot-hook ")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_kill_of_a_command_that_runs_no_loop_is_exit_130_without_a_traceback(
    signum: signal.Signals,
) -> None:
    process = subprocess.Popen([sys.executable, "-m", "ot_hook", "decode", "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdin is not None
        process.stdin.write('{"Id": 1, "ActionType": 4, "RecordType": 7, "UniqueId": 1}\n')
        process.stdin.flush()
        assert process.stdout is not None
        assert '"Id": 1' in process.stdout.readline()  # running, waiting for more
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert (process.returncode, err) == (130, "")
