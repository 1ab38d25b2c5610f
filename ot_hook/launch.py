"""The `ot-hook` script and `python -m ot_hook`: Ctrl-C at any moment, even while Python is
still importing Typer and rich (the first tenth of a second), is exit 130, not a traceback."""

from __future__ import annotations

INTERRUPTED = 130  # ExitCode.INTERRUPTED, without importing anything before the guard


def main() -> int:
    try:
        from ot_hook.cli import main as run

        return run()
    except KeyboardInterrupt:
        return INTERRUPTED
