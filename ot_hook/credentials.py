"""Where the user name and password come from, the same way for `serve` and `send-sample`:
an option, a password file, the environment (handled by the CLI), or the password `serve`
generated and kept in the state directory. A flag wins over the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ot_hook import home

T = TypeVar("T")


class CredentialsError(Exception):
    """Credentials cannot be found or read; the message is one line and never the secret."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage  # a bad or contradicting flag: a usage error (exit 2)


class FromEnvironment(str):
    """A password the CLI took from OT_HOOK_PASSWORD, not from --password: an explicit
    --password-file wins over it."""

    __slots__ = ()


@dataclass(frozen=True)
class ResolvedCredentials:
    user: str
    password: str
    generated: bool = False  # serve made this password now: show it once


def read_password_file(path: Path) -> str:
    """The first line of a password file, without its line ending (spaces are kept) or the
    byte order mark some Windows editors put first."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a leading BOM is not the password
    except FileNotFoundError:
        raise CredentialsError(f"password file {path} does not exist", usage=True) from None
    except IsADirectoryError:
        raise CredentialsError(f"password file {path} is a directory", usage=True) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"cannot read password file {path}: {exc}") from None
    return text.splitlines()[0] if text else ""


def _explicit_password(password: str | None, password_file: Path | None) -> str | None:
    if password_file is not None:
        if password is not None and not isinstance(password, FromEnvironment):
            raise CredentialsError("give either --password or --password-file, not both",
                                   usage=True)
        return read_password_file(password_file)
    return str(password) if password is not None else None  # a plain str from here on


def _kept(read: Callable[[], T]) -> T:
    """What the state directory keeps, or CredentialsError saying why it cannot be had."""
    try:
        return read()
    except home.HomeError as exc:
        raise CredentialsError(str(exc)) from None


def _check_user(user: str) -> str:
    if ":" in user:
        raise CredentialsError("the user name cannot contain ':' (Basic Auth splits there)",
                               usage=True)
    return user


def for_serve(
    user: str | None, password: str | None, password_file: Path | None, state: Path
) -> ResolvedCredentials:
    """Explicit credentials, else the generated password kept in `state` (made on first use)."""
    chosen_user = _check_user(user if user is not None else home.DEFAULT_USER)
    explicit = _explicit_password(password, password_file)
    if explicit is not None:
        return ResolvedCredentials(chosen_user, explicit)
    generated, is_new = _kept(lambda: home.load_or_create_password(state))
    return ResolvedCredentials(chosen_user, generated, generated=is_new)


def for_sender(
    user: str | None, password: str | None, password_file: Path | None, state: Path,
    url: str | None = None,
) -> ResolvedCredentials:
    """Explicit credentials, else those of the receiver of `state`: the password it keeps
    goes only to `url` when that can be this receiver (https:// on this machine, on its port
    while it runs), never to another app."""
    info = home.read_serve_info(state)
    chosen_user = _check_user(
        user if user is not None else (info.user if info else home.DEFAULT_USER)
    )
    explicit = _explicit_password(password, password_file)
    if explicit is not None:
        return ResolvedCredentials(chosen_user, explicit)
    if info is not None and not info.password_kept:
        raise CredentialsError(
            f"the receiver running on {state} (pid {info.pid}) was given its own password: "
            "pass the same with OT_HOOK_PASSWORD or --password-file"
        )
    if url is not None and not _may_be_the_receiver(url, info):
        raise CredentialsError(
            f"no password for {url}: pass --password-file or set OT_HOOK_PASSWORD (the "
            f"password that serve keeps in {state} goes only to that receiver)", usage=True)
    kept = _kept(lambda: home.read_password(state))
    if kept is None:
        raise CredentialsError(
            "no password: pass --password-file, set OT_HOOK_PASSWORD, or use the --home "
            "of an ot-hook serve that generated one"
        )
    return ResolvedCredentials(chosen_user, kept)


def _may_be_the_receiver(url: str, info: home.ServeInfo | None) -> bool:
    from urllib.parse import urlsplit

    from ot_hook.sender import is_loopback

    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme.lower() != "https" or not is_loopback(host):
        return False
    if info is None:
        return True
    listening = info.host.strip("[]").lower()
    same_host = host == listening or listening in ("0.0.0.0", "::") or host == "localhost"
    return same_host and port == info.port
