"""A stored delivery, or an attempt to relay one, shown to a person (a rich Text line) or to a
program (a JSON object).

Text from a delivery never acts as markup (it goes into `Text` as plain strings) and never
moves the cursor (control characters are shown as escapes by `printable`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any

from ot_hook import codes
from ot_hook.store import StoredDelivery
from ot_hook.textsafe import printable

if TYPE_CHECKING:  # rich is imported only when a person is looking
    from rich.text import Text

    from ot_hook.tail import RelayAttempt

BADGES = {
    "accepted": ("accepted ", "bold green"),
    "duplicate": ("duplicate", "bold yellow"),
    "rejected": ("rejected ", "bold red"),
}
RELAY_BADGE = "relay    "  # as wide as the outcome badges, so the columns line up
RELAY_STYLES = {"delivered": "green", "pending": "yellow", "failed": "red"}
ACTION_STYLES = {1: "green", 2: "blue", 3: "red", 4: "magenta"}
UNKNOWN_CODE_STYLE = "dim"
ACTION_WIDTH = len("Change Status")
RECORD_WIDTH = len("Purchase Order")


# For programs ------------------------------------------------------------------------------


def to_json(delivery: StoredDelivery, *, headers: bool = False) -> dict[str, Any]:
    """The delivery as the JSON object `tail --json` prints (one per line); `headers` (-v)
    adds the stored headers as [name, value] pairs, in the order they came."""
    d = delivery
    obj: dict[str, Any] = {
        "row": d.row,
        "received_at": d.received_at,
        "outcome": d.outcome,
        "http_status": d.http_status,
        "reason": d.reason,
        "warnings": d.warnings,
        "duplicate_of": d.duplicate_of,
        "remote": d.remote,
        "target": d.target,
        "content_type": d.content_type,
        "event": parsed_event(d),
        "ActionTypeName": _name(codes.action_name, d.action_type),
        "RecordTypeName": _name(codes.record_name, d.record_type),
    }
    if headers:
        obj["headers"] = [[name, value] for name, value in d.headers]
    text = body_text(d.body)
    if text is None:
        obj["body_base64"] = base64.b64encode(d.body).decode("ascii")
    else:
        obj["body"] = text
    return obj


def json_line(delivery: StoredDelivery, *, headers: bool = False) -> str:
    # ASCII only: any reader can take it, whatever the locale, and no byte can be an escape.
    return json.dumps(to_json(delivery, headers=headers), ensure_ascii=True)


def relay_to_json(attempt: RelayAttempt) -> dict[str, Any]:
    """A relay attempt as `tail --json` prints it. `relay_of` (the delivery's row) tells it
    apart from a delivery, which has `row` instead."""
    a = attempt
    return {
        "relay_of": a.row,
        "attempt": a.attempt,
        "attempted_at": a.attempted_at,
        "status": a.status,
        "millis": round(a.millis, 1),
        "error": a.error,
        "state": a.state,
    }


def relay_json_line(attempt: RelayAttempt) -> str:
    return json.dumps(relay_to_json(attempt), ensure_ascii=True)


def parsed_event(delivery: StoredDelivery) -> Any:
    """The Audit Trail object as it arrived, or None when the delivery was not one."""
    if delivery.event_id is None:
        return None
    try:
        return json.loads(delivery.body.decode("utf-8-sig"))
    except (ValueError, RecursionError):  # the receiver parsed it, so this should not happen
        return None


def body_text(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _name(lookup: Callable[[int], str | None], code: int | None) -> str | None:
    return None if code is None else lookup(code)


# For people --------------------------------------------------------------------------------


def format_time(received_at: str, *, utc: bool = False, tz: tzinfo | None = None) -> str:
    """A stored UTC time as local time with its offset (or UTC with Z), to the millisecond."""
    moment = datetime.fromisoformat(received_at)
    if utc:
        return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    local = moment.astimezone(tz)  # tz None: the system's zone (TZ is honoured)
    offset = local.strftime("%z")
    return (
        local.strftime("%Y-%m-%d %H:%M:%S.")
        + f"{local.microsecond // 1000:03d} {offset[:3]}:{offset[3:]}"
    )


def line(delivery: StoredDelivery, *, utc: bool = False, tz: tzinfo | None = None) -> Text:
    """One line for a terminal: row, time, outcome badge, action, record, id, text, user."""
    from rich.text import Text

    d = delivery
    badge, badge_style = BADGES[d.outcome]
    text = Text(no_wrap=False)
    text.append(f"#{d.row:<5} ", style="dim")
    text.append(format_time(d.received_at, utc=utc, tz=tz) + "  ")
    text.append(badge, style=badge_style)
    text.append("  ")
    if d.outcome == "rejected":
        text.append(f"{d.http_status} ", style="red")
        text.append(printable(d.reason or "no reason recorded"))
        return text
    _append_code(text, d.action_type, codes.action_name, "ActionType", ACTION_WIDTH,
                 ACTION_STYLES.get(d.action_type or 0, "cyan"))
    _append_code(text, d.record_type, codes.record_name, "RecordType", RECORD_WIDTH, "bold")
    text.append(printable(d.unique_id or ""), style="bold")
    if d.description:
        text.append("  " + printable(d.description))
    if d.username:
        text.append("  by ", style="dim")
        text.append(printable(d.username), style="italic")
    if d.duplicate_of is not None:
        text.append(f"  (duplicate of #{d.duplicate_of})", style="yellow")
    for warning in d.warnings:
        text.append("  ! " + printable(warning), style="yellow")
    return text


def relay_line(attempt: RelayAttempt, *, utc: bool = False, tz: tzinfo | None = None) -> Text:
    """One line for a terminal: the delivery's row, when, and what the user's app made of it,
    e.g. `#12  ...  relay  → 200 in 5 ms (delivered)` or
    `#12  ...  relay  attempt 2: cannot connect: Connection refused, retrying`."""
    from rich.text import Text

    a = attempt
    style = RELAY_STYLES.get(a.state, "cyan")
    text = Text(no_wrap=False)
    text.append(f"#{a.row:<5} ", style="dim")
    text.append(format_time(a.attempted_at, utc=utc, tz=tz) + "  ")
    text.append(RELAY_BADGE, style="bold " + style)
    text.append("  ")
    if a.attempt > 1:
        text.append(f"attempt {a.attempt}")
    millis = f"{a.millis:.0f}" if a.millis >= 10 else f"{a.millis:.1f}"
    if a.status is not None:
        text.append(" → " if a.attempt > 1 else "→ ")
        text.append(str(a.status), style="bold " + style)
        text.append(f" in {millis} ms")
        if a.error:  # a redirect: where it pointed, and that it was not followed
            text.append(f": {printable(a.error)}", style=style)
    else:
        text.append(": " if a.attempt > 1 else "")
        text.append(printable(a.error or "no answer"), style=style)
        text.append(f" ({millis} ms)", style="dim")
    if a.state == "pending":
        text.append(", retrying", style=style)
    else:
        text.append(f" ({printable(a.state)})", style=style)
    return text


def _append_code(
    text: Text, code: int | None, lookup: Callable[[int], str | None], kind: str, width: int,
    style: str,
) -> None:
    name = _name(lookup, code)
    if name is None:
        text.append(f"{kind} {code}".ljust(width), style=UNKNOWN_CODE_STYLE)
    else:
        text.append(name.ljust(width), style=style)
    text.append("  ")


def details(delivery: StoredDelivery) -> Text:
    """What `-v` adds under the line: the stored headers and the body, JSON pretty-printed."""
    from rich.text import Text

    d = delivery
    text = Text()
    text.append(f"    {d.method} {printable(d.target)} from {d.remote or '?'}", style="dim")
    for name, value in d.headers:
        text.append(f"\n    {printable(name)}: ", style="dim")
        text.append(printable(value))
    for body_line in _pretty_body(d).splitlines():
        text.append("\n    " + printable(body_line))
    if d.body_size > len(d.body):
        # The receiver stops reading one byte past --max-body: how much more came is unknown.
        came = f"more than {len(d.body)}" if d.body_size == len(d.body) + 1 else d.body_size
        text.append(f"\n    ({came} bytes arrived; the first {len(d.body)} were kept)",
                    style="dim")
    return text


def _pretty_body(delivery: StoredDelivery) -> str:
    text = body_text(delivery.body)
    if text is None:
        return "(not UTF-8) base64: " + base64.b64encode(delivery.body).decode("ascii")
    try:
        return json.dumps(json.loads(text.lstrip("\ufeff")), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return text
