"""Where the user name and password come from, the same way for `serve` and `send-sample`:
an option, the environment (handled by the CLI), a password file, or the password `serve`
generated and kept in the state directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ot_hook import home


class CredentialsError(Exception):
    """Credentials cannot be found or read; the message is one line and never the secret."""


@dataclass(frozen=True)
class ResolvedCredentials:
    user: str
    password: str
    generated: bool = False  # serve made this password now: show it once


def read_password_file(path: Path) -> str:
    """The first line of a password file, without its line ending (spaces are kept)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialsError(f"password file {path} does not exist") from None
    except IsADirectoryError:
        raise CredentialsError(f"password file {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"cannot read password file {path}: {exc}") from None
    return text.splitlines()[0] if text else ""


def _explicit_password(password: str | None, password_file: Path | None) -> str | None:
    if password is not None and password_file is not None:
        raise CredentialsError("give either --password (or OT_HOOK_PASSWORD) or --password-file")
    if password_file is not None:
        return read_password_file(password_file)
    return password


def _check_user(user: str) -> str:
    if ":" in user:
        raise CredentialsError("the user name cannot contain ':' (Basic Auth splits there)")
    return user


def for_serve(
    user: str | None, password: str | None, password_file: Path | None, state: Path
) -> ResolvedCredentials:
    """Explicit credentials, else the generated password kept in `state` (made on first use)."""
    chosen_user = _check_user(user if user is not None else home.DEFAULT_USER)
    explicit = _explicit_password(password, password_file)
    if explicit is not None:
        return ResolvedCredentials(chosen_user, explicit)
    generated, is_new = home.load_or_create_password(state)
    return ResolvedCredentials(chosen_user, generated, generated=is_new)


def for_sender(
    user: str | None, password: str | None, password_file: Path | None, state: Path
) -> ResolvedCredentials:
    """Explicit credentials, else those of the receiver running on `state`."""
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
    kept = home.read_password(state)
    if kept is None:
        raise CredentialsError(
            "no password: pass --password-file, set OT_HOOK_PASSWORD, or use the --home "
            "of an ot-hook serve that generated one"
        )
    return ResolvedCredentials(chosen_user, kept)
