"""`ot-hook prune`: delete old deliveries from the store."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated

import typer

from ot_hook.cliutil import HomeOption, fail, resolve_home
from ot_hook.exitcodes import ExitCode

EPILOG = """Examples:

  ot-hook prune --older-than 30d

  ot-hook prune --older-than 2024-01-01        (a time: local unless it has an offset)

  ot-hook prune --all                          (works while serve runs)
"""


def prune(
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Delete deliveries received longer ago than this "
                     "duration (30d, 12h) or before this time.", show_default=False),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Delete every stored delivery.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Delete old deliveries from the store and say how many went."""
    from ot_hook import home as state
    from ot_hook import prune as pruning
    from ot_hook import store
    from ot_hook.tail import FilterError, parse_moment

    if (older_than is None) == (not everything):
        fail("give either --older-than or --all", ExitCode.USAGE)
    try:
        before = parse_moment(older_than, now=datetime.now(UTC)) if older_than is not None \
            else None
    except FilterError as exc:
        fail(f"--older-than: {exc}", ExitCode.USAGE)
    path = resolve_home(home) / state.STORE
    try:
        deleted = pruning.prune(path, before)
        kept = pruning.pending_kept(path, before)
    except (pruning.NoStore, store.StoreError) as exc:
        fail(str(exc))
    when = f" received before {before.isoformat(sep=' ', timespec='seconds')}" if before else ""
    noun = "delivery" if deleted == 1 else "deliveries"
    print(f"Deleted {deleted} {noun}{when} from {path}.", flush=True)
    if kept:
        print(f"Kept {kept} whose relay to --forward-to is still pending.", file=sys.stderr,
              flush=True)
