"""Where output goes and how it looks, decided once and injectable in tests (as httpie does).

stdout is for data, stderr for status. Pretty output with colours only on a terminal and
without NO_COLOR; a pipe gets plain text or JSON lines and never an escape code.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # rich is imported only by what draws with it
    from rich.console import Console


@dataclass
class Terminal:
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    stdout_isatty: bool | None = None  # None: ask the stream
    no_color: bool | None = None  # None: read NO_COLOR from the environment

    def __post_init__(self) -> None:
        if self.stdout_isatty is None:
            self.stdout_isatty = isatty(self.stdout)
        if self.no_color is None:
            self.no_color = bool(os.environ.get("NO_COLOR"))

    @property
    def pretty(self) -> bool:
        """Tables and colours for a person; False means JSON lines for a program."""
        return bool(self.stdout_isatty)

    def console(self, *, stderr: bool = False) -> Console:
        """A rich Console on stdout (or stderr) that never treats data as markup."""
        from rich.console import Console

        stream = self.stderr if stderr else self.stdout
        tty = isatty(stream) if stderr else bool(self.stdout_isatty)
        return Console(
            file=stream,
            force_terminal=tty,
            no_color=bool(self.no_color),
            color_system="auto" if tty and not self.no_color else None,
            markup=False,
            emoji=False,
            highlight=False,
            soft_wrap=False,
        )

    def status(self, message: str) -> None:
        """A status line on stderr (never on stdout, which is for data)."""
        print(message, file=self.stderr, flush=True)


def isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
