"""`ot-hook serve`: the HTTPS receiver."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ot_hook.cliutil import (
    HomeOption,
    PasswordFileOption,
    PasswordOption,
    UserOption,
    fail,
    one_of,
)
from ot_hook.exitcodes import ExitCode

EPILOG = """Examples:

  OT_HOOK_USER=demo OT_HOOK_PASSWORD=s3cret ot-hook serve

  ot-hook serve --port 0 --home ./state     (a free port, state of its own)

  ot-hook serve --forward-to http://localhost:3000/hook   (relay to your app)
"""


def serve(
    user: UserOption = None,
    password: PasswordOption = None,
    password_file: PasswordFileOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; ::1 for IPv6 loopback, 0.0.0.0 for all.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")
    ] = 8443,
    path: Annotated[str, typer.Option(help="The URL path deliveries are POSTed to.")] = "/",
    max_body: Annotated[
        int, typer.Option(min=1, help="Largest body accepted, in bytes; larger gets 413.")
    ] = 1024 * 1024,
    hostname: Annotated[
        list[str] | None,
        typer.Option(
            "--hostname",
            help="Extra name or address for the certificate (repeatable).",
        ),
    ] = None,
    cert: Annotated[
        Path | None,
        typer.Option(help="Serve this certificate (PEM chain) instead of the local CA's.",
                     dir_okay=False),
    ] = None,
    key: Annotated[
        Path | None, typer.Option(help="The private key for --cert (PEM).", dir_okay=False)
    ] = None,
    key_type: Annotated[
        str | None,
        typer.Option(
            "--key-type",
            help="ecdsa or rsa (for older TLS stacks). A new state directory gets ecdsa; "
            "an existing one keeps its CA's type unless told otherwise.",
            show_default=False, autocompletion=one_of("ecdsa", "rsa"),
        ),
    ] = None,
    home: HomeOption = None,
    status_code: Annotated[
        int,
        typer.Option(min=200, max=599, help="Answer accepted deliveries with this status "
                     "(they are still stored)."),
    ] = 200,
    delay: Annotated[
        float, typer.Option(min=0.0, max=86400, help="Seconds to wait before answering a stored "
                            "delivery (to try a sender's timeout); a stop answers at once.")
    ] = 0.0,
    idle_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Close a connection that sends nothing for this many "
                     "seconds, or takes longer than that to send a request's headers (closed "
                     "without an answer) or its body (408, kept as rejected)."),
    ] = 60.0,
    forward_to: Annotated[
        str | None,
        typer.Option(help="Relay each accepted delivery to your own app at this URL "
                     "(http:// or https://), after it is stored and answered.",
                     rich_help_panel="Forwarding"),
    ] = None,
    forward_user: Annotated[
        str | None,
        typer.Option(help="Basic Auth user for --forward-to. Without it, the sender's own "
                     "Authorization is passed through while serve runs (it is never stored, "
                     "so relays resumed after a restart go without).",
                     rich_help_panel="Forwarding"),
    ] = None,
    forward_password: Annotated[
        str | None,
        typer.Option(envvar="OT_HOOK_FORWARD_PASSWORD", show_envvar=False,
                     help="Basic Auth password for --forward-to. Prefer "
                     "OT_HOOK_FORWARD_PASSWORD or --forward-password-file: a password on the "
                     "command line is visible in the process list.",
                     rich_help_panel="Forwarding"),
    ] = None,
    forward_password_file: Annotated[
        Path | None,
        typer.Option(help="Read the --forward-to password from this file.", dir_okay=False,
                     rich_help_panel="Forwarding"),
    ] = None,
    forward_cacert: Annotated[
        Path | None,
        typer.Option(help="Trust this CA (PEM) for an https:// --forward-to.", dir_okay=False,
                     rich_help_panel="Forwarding"),
    ] = None,
    forward_insecure: Annotated[
        bool, typer.Option("--forward-insecure",
                           help="Do not verify the certificate of --forward-to.",
                           rich_help_panel="Forwarding"),
    ] = False,
    forward_retries: Annotated[
        int, typer.Option(min=0, max=100, help="Retries of a relay after a connection error, "
                          "timeout, 429 or 5xx, with backoff up to a minute apart (10: about "
                          "five minutes of an app being down).", rich_help_panel="Forwarding"),
    ] = 10,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No line per request; only the banner.")
    ] = False,
    loop: Annotated[
        str, typer.Option(help="Event loop: auto (uvloop when installed), asyncio or uvloop.",
                          autocompletion=one_of("auto", "asyncio", "uvloop"))
    ] = "auto",
) -> None:
    """Receive Order Time deliveries over HTTPS, with Basic Auth, and store every one."""
    from ot_hook import certs, credentials, store
    from ot_hook import home as state
    from ot_hook import serve as serving

    try:
        key_kind = certs.KeyType(key_type.lower()) if key_type else None
    except ValueError:
        fail(f"--key-type must be ecdsa or rsa, not {key_type!r}", ExitCode.USAGE)
    given = {"--forward-user": forward_user, "--forward-password-file": forward_password_file,
             "--forward-cacert": forward_cacert, "--forward-insecure": forward_insecure or None}
    stray = [flag for flag, value in given.items() if value is not None]
    if forward_to is not None and not forward_to.strip():
        fail("--forward-to is empty: give your app's URL, or leave the flag out",
             ExitCode.USAGE)
    if stray and not forward_to:
        fail(f"{', '.join(stray)}: these go with --forward-to", ExitCode.USAGE)
    if loop not in ("auto", "asyncio", "uvloop"):
        fail(f"--loop must be auto, asyncio or uvloop, not {loop!r}", ExitCode.USAGE)
    from ot_hook.cliutil import resolve_home

    options = serving.ServeOptions(
        home=resolve_home(home), user=user, password=password, password_file=password_file,
        host=host, port=port, path=path, max_body=max_body, hostnames=tuple(hostname or ()),
        cert=cert, key=key, key_type=key_kind, status_code=status_code, delay=delay,
        idle_timeout=idle_timeout,
        forward=serving.ForwardOptions(
            forward_to, forward_user, forward_password, forward_password_file, forward_cacert,
            forward_insecure, forward_retries,
        ) if forward_to else None,
        quiet=quiet, loop=loop,  # type: ignore[arg-type]
    )
    try:
        serving.run(options, sys.stderr)
    except (serving.ServeError, credentials.CredentialsError) as exc:
        fail(str(exc), ExitCode.USAGE if exc.usage else ExitCode.ERROR)
    except (certs.CertError, state.HomeError,
            store.StoreError) as exc:
        fail(str(exc))
    except serving.StoppedAtOnce:
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    except KeyboardInterrupt:
        # On Windows, Ctrl-C (signals do not reach the loop there): the usual stop. Elsewhere
        # a signal that came before the loop took it over: serve was interrupted starting.
        if sys.platform != "win32":
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
