"""The `ot-hook` command line: the Typer app and its commands, registered from ot_hook.commands.

Commands import their heavy dependencies (aiohttp, trustme) inside the function, so `--help`,
completion, `decode` and `tail` never load them.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ot_hook import __version__
from ot_hook.cliutil import discard_stdout
from ot_hook.commands import decode, prune, replay, send, serve, tail
from ot_hook.exitcodes import ExitCode


class _OneLineErrors(TyperGroup):
    """A bad flag gets one line on stderr and exit code 2, not a box of usage text."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError

        try:
            result = super().main(
                args, prog_name or "ot-hook", complete_var, standalone_mode=False, **extra
            )
        except NoArgsIsHelpError as exc:
            exc.show()
            result = int(ExitCode.USAGE)
        except ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(f"ot-hook: error: {exc.format_message()}{hint}", file=sys.stderr)
            result = int(ExitCode.USAGE) if exc.exit_code == 2 else exc.exit_code
        except typer.Abort:
            result = int(ExitCode.INTERRUPTED)
        except OSError as exc:
            if exc.errno not in _OUTPUT_FAILED:
                raise
            print(f"ot-hook: error: cannot write the output: {exc.strerror or exc}",
                  file=sys.stderr)
            discard_stdout()  # what is still buffered would fail again at exit
            result = int(ExitCode.ERROR)
        code = result if isinstance(result, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


# Writing stdout failed: a full disk, /dev/full, a quota, a file too large, a bad device.
_OUTPUT_FAILED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


app = typer.Typer(
    name="ot-hook",
    cls=_OneLineErrors,
    help="Receive, send, watch and decode Order Time Audit Trail webhooks on your own machine.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold a password
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        print(f"ot-hook {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_show_version, is_eager=True,
                     help="Show the version and exit."),
    ] = None,
) -> None:
    """Receive, send, watch and decode Order Time Audit Trail webhooks on your own machine."""
    _use_codes_file(os.environ.get("OT_HOOK_CODES"))


def _use_codes_file(path: str | None) -> None:
    """OT_HOOK_CODES names the user's own codes (TOML): every command then knows them."""
    from ot_hook import codes

    if not path:
        codes.use(codes.BUILTIN)  # also undoes an earlier in-process run's (tests)
        return
    from pathlib import Path

    from ot_hook import decode

    if not Path(path).is_file():  # a setting that names no file: as --codes would (exit 2)
        print(f"ot-hook: error: OT_HOOK_CODES: file {path!r} does not exist", file=sys.stderr)
        raise typer.Exit(int(ExitCode.USAGE))
    try:
        codes.use(decode.load_tables(Path(path)))
    except decode.DecodeError as exc:
        print(f"ot-hook: error: OT_HOOK_CODES: {exc}", file=sys.stderr)
        raise typer.Exit(int(ExitCode.BAD_INPUT)) from None


app.command(epilog=serve.EPILOG, short_help="Receive deliveries over HTTPS and store every one.")(
    serve.serve
)
app.command("send-sample", epilog=send.EPILOG,
            short_help="Send realistic Audit Trail deliveries to a receiver.")(send.send_sample)
app.command(epilog=decode.EPILOG, short_help="Turn codes into names and back.")(decode.decode)
app.command(epilog=tail.EPILOG, short_help="Show stored deliveries and follow new ones.")(
    tail.tail
)
app.command(epilog=prune.EPILOG, short_help="Delete old deliveries from the store.")(
    prune.prune
)
app.command(epilog=replay.EPILOG, short_help="Send stored deliveries again, byte for byte.")(
    replay.replay
)


def _ensure_standard_streams() -> None:
    """Started with stdin, stdout or stderr closed (`<&-`, `>&-`), the next file or socket
    opened would take that descriptor and data could go astray: point it at /dev/null."""
    import os

    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            if os.open(os.devnull, os.O_RDWR) != fd:  # the lowest free descriptor: this one
                continue
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app; `argv` lets tests call it in-process. Returns the exit code."""
    _ensure_standard_streams()
    try:
        code = app(args=list(argv) if argv is not None else None, prog_name="ot-hook",
                   standalone_mode=False)
    except SystemExit as exc:  # shell completion exits by itself
        return exc.code if isinstance(exc.code, int) else 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
