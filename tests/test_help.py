"""Every command and option explains itself, and each command's help ends with examples."""

from __future__ import annotations

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
