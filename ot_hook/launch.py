"""The `ot-hook` script and `python -m ot_hook`: Ctrl-C, a kill (SIGTERM) or a closed terminal
(SIGHUP) at any moment, even while Python is still importing Typer and rich, is exit 130, not
a traceback or a silent 143. Commands that run an event loop (serve, send-sample, replay) then
take these signals over to stop in their own way."""

from __future__ import annotations

import signal

INTERRUPTED = 130  # ExitCode.INTERRUPTED, without importing anything before the guard


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        # Only where nothing chose otherwise: under nohup, SIGHUP stays ignored.
        if number is not None and signal.getsignal(number) is signal.SIG_DFL:
            signal.signal(number, _interrupted)
    try:
        from ot_hook.cli import main as run

        return run()
    except KeyboardInterrupt:
        return INTERRUPTED
