"""What every command shares: the option types users meet everywhere, and one-line errors.

Kept free of aiohttp and trustme so that `decode`, `tail` and `--help` start fast.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ot_hook.exitcodes import ExitCode


def _home_path(text: str) -> Path:
    """`--home ''` (an unset shell variable, say) would put the state in the current
    directory: refused, while `--home .` says so on purpose."""
    if text == "":
        raise typer.BadParameter("is empty; give a directory (--home . for this one)")
    if os.path.isfile(text):
        raise typer.BadParameter(f"Directory {text!r} is a file.")
    return Path(text)


HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="OT_HOOK_HOME",
        help="State directory (CA, store, serve.json). Default: the per-user app directory.",
        show_default=False,
        metavar="<dir>",
        parser=_home_path,
    ),
]
UserOption = Annotated[
    str | None,
    typer.Option("--user", "-u", envvar="OT_HOOK_USER", help="Basic Auth user name."),
]


def _mark_environment_password(
    ctx: typer.Context, param: typer.CallbackParam, value: str | None
) -> str | None:
    """Tell a password from OT_HOOK_PASSWORD from one given with --password: a flag
    (--password-file) wins over the environment, while two flags are refused."""
    from typer._click.core import ParameterSource

    from ot_hook.credentials import FromEnvironment

    if value is not None and param.name is not None and (
        ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT
    ):
        return FromEnvironment(value)
    return value


PasswordOption = Annotated[
    str | None,
    typer.Option(
        "--password",
        envvar="OT_HOOK_PASSWORD",
        help="Basic Auth password. Prefer OT_HOOK_PASSWORD or --password-file: "
        "a password on the command line is visible in the process list.",
        show_envvar=True,
        callback=_mark_environment_password,
    ),
]
PasswordFileOption = Annotated[
    Path | None,
    typer.Option(
        "--password-file",
        help="Read the password from the first line of this file.",
        dir_okay=False,
    ),
]

# Sending options: the same meaning for send-sample and replay.
# One sending task and connection each: past this the sender spends its time starting them.
MAX_CONCURRENCY = 10_000
InsecureOption = Annotated[
    bool, typer.Option("--insecure", help="Do not verify the certificate (warns).")
]
TimeoutOption = Annotated[
    float, typer.Option(min=0.001, max=86400, help="Seconds to wait for each answer.")
]
RetriesOption = Annotated[
    int, typer.Option(min=0, help="Retry connection errors, 429 and 5xx this many times, "
                      "with backoff, honouring Retry-After.")
]
SendJsonOption = Annotated[
    bool, typer.Option("--json", help="One JSON result per delivery on stdout (the default "
                       "when stdout is not a terminal); the summary on stderr.")
]


def resolve_home(option: Path | None) -> Path:
    from ot_hook.home import default_home

    return (option or default_home()).expanduser()


def error(message: str) -> None:
    """One line on stderr, prefixed with the program name."""
    print(f"ot-hook: error: {message}", file=sys.stderr, flush=True)


def fail(message: str, code: ExitCode = ExitCode.ERROR) -> NoReturn:
    error(message)
    raise typer.Exit(int(code))


def discard_stdout() -> None:
    """After `| head` closed the pipe, or a write failed: point stdout at /dev/null, so that
    the flush at exit does not complain about it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (tests)
        pass


def reader_gone(stream: object) -> bool:
    """True once the reading end of a pipe on `stream` was closed (`| head` has had enough),
    which a process that is only waiting to write would otherwise notice only at its next
    write. False wherever that cannot be told (a terminal, a file, Windows)."""
    import select

    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        poller = select.poll()
        poller.register(fd, 0)  # POLLERR and POLLHUP are reported whatever is asked for
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def one_of(*words: str) -> Callable[[str], list[str]]:
    """Shell completion for an option that takes one of a few fixed words."""

    def complete(incomplete: str) -> list[str]:
        return [word for word in words if word.startswith(incomplete.lower())]

    return complete


OUTCOMES = one_of("accepted", "duplicate", "rejected")


def code_names(kind: str) -> Callable[[str], list[str]]:
    """Shell completion for --action or --record: the names of the built-in table, written
    without spaces (ChangeStatus), which the lookup reads as it reads "change status". What
    was typed is kept as typed (sales -> salesOrder): Typer offers only words that start
    with it, and the lookup ignores case."""

    def complete(incomplete: str) -> list[str]:
        from ot_hook import codes

        words = ["".join(part[:1].upper() + part[1:] for part in entry.name.split())
                 for entry in codes.BUILTIN.entries(kind)]  # type: ignore[arg-type]
        return [incomplete + word[len(incomplete):] for word in words
                if word.casefold().startswith(incomplete.casefold())]

    return complete


ACTION_NAMES = code_names("action")
RECORD_NAMES = code_names("record")
