"""The `ot-hook` command line: the Typer app and its commands, registered from ot_hook.commands.

Commands import their heavy dependencies (aiohttp, trustme) inside the function, so `--help`,
completion, `decode` and `tail` never load them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ot_hook import __version__
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
        code = result if isinstance(result, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="ot-hook",
    cls=_OneLineErrors,
    help="Receive, send, watch and decode Order Time Audit Trail webhooks on your own machine.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold a password
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


app.command(epilog=serve.EPILOG)(serve.serve)
app.command("send-sample", epilog=send.EPILOG)(send.send_sample)
app.command(epilog=decode.EPILOG)(decode.decode)
app.command(epilog=tail.EPILOG)(tail.tail)
app.command(epilog=prune.EPILOG)(prune.prune)
app.command(epilog=replay.EPILOG)(replay.replay)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app; `argv` lets tests call it in-process. Returns the exit code."""
    try:
        code = app(args=list(argv) if argv is not None else None, prog_name="ot-hook",
                   standalone_mode=False)
    except SystemExit as exc:  # shell completion exits by itself
        return exc.code if isinstance(exc.code, int) else 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
