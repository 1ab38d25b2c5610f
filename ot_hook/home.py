"""The state directory: where the CA, the store, the running receiver's address and the
generated password live, and the small file helpers that keep secrets private.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

CA_CERT = "ca.pem"  # the certificate a client trusts
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"  # the leaf's key and chain
STORE = "events.db"
SERVE_INFO = "serve.json"  # the running receiver's URL, port and pid
PASSWORD = "password"  # only when serve generated one
LOCK = "serve.lock"

DEFAULT_USER = "ot-hook"  # the user name paired with a generated password


class HomeError(Exception):
    """The state directory cannot be used; the message is one line for the user."""


def default_home() -> Path:
    import typer  # here, so that library users who pass a home never import it

    return Path(typer.get_app_dir("ot-hook"))


def ensure_home(path: Path) -> Path:
    """Create the state directory (private to this user) and check that it is writable."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise HomeError(f"cannot create the state directory {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise HomeError(f"the state directory {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise HomeError(
            f"the state directory {path} is not writable; "
            "choose another with --home or OT_HOOK_HOME"
        )
    return path


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write to a temporary file with `mode` and rename it over `path`, so that nobody ever
    reads half a file or a key with the wrong permissions. Raises HomeError (a full disk, a
    directory in the way...), and then `path` is as it was."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise HomeError(_cannot_write(path, exc)) from None
    try:
        if hasattr(os, "fchmod"):  # not on Windows
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise HomeError(_cannot_write(path, exc)) from None
        raise


def _cannot_write(path: Path, exc: OSError) -> str:
    return f"cannot write {path}: {exc.strerror or exc}"


def write_private(path: Path, data: bytes) -> None:
    """Keys and passwords: mode 0600, whatever the umask says."""
    _write_atomically(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    _write_atomically(path, data, 0o644)


# The generated password -------------------------------------------------------------------


def read_password(state: Path) -> str | None:
    """The password serve generated and kept in `state`; None when there is none. Raises
    HomeError when there is one that cannot be read."""
    path = state / PASSWORD
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HomeError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise HomeError(f"cannot read {path}: it is not the password ot-hook wrote (not "
                        "UTF-8); remove it to have serve make a new one") from None


def load_or_create_password(state: Path) -> tuple[str, bool]:
    """The password serve generated earlier, or a new one; the flag says it is new."""
    existing = read_password(state)
    if existing is not None:
        return existing, False
    password = secrets.token_urlsafe(18)
    while password.startswith("-"):  # it would pass for an option in a shell command
        password = secrets.token_urlsafe(18)
    write_private(state / PASSWORD, (password + "\n").encode())
    return password, True


# serve.json: how scripts and send-sample find the running receiver ------------------------


@dataclass(frozen=True)
class ServeInfo:
    url: str
    host: str
    port: int
    pid: int
    user: str
    ca: str | None  # the CA file to trust, or None with --cert/--key
    started_at: str
    forward_to: str | None = None  # serve --forward-to, the default target of replay
    password_kept: bool = True  # the password is the one kept in the state directory


def write_serve_info(state: Path, info: ServeInfo) -> None:
    write_public(state / SERVE_INFO, (json.dumps(asdict(info), indent=2) + "\n").encode())


def read_serve_info(state: Path) -> ServeInfo | None:
    """The running receiver's serve.json; None when there is none, it is unreadable, or the
    serve that wrote it is gone (SIGKILL leaves it behind)."""
    info = _serve_info(state)
    return info if info is not None and _alive(info.pid) else None


def stopped_serve_info(state: Path) -> ServeInfo | None:
    """The serve.json a receiver that is gone left behind (killed), else None."""
    info = _serve_info(state)
    return info if info is not None and not _alive(info.pid) else None


def _serve_info(state: Path) -> ServeInfo | None:
    try:
        data: dict[str, Any] = json.loads((state / SERVE_INFO).read_text(encoding="utf-8"))
        return ServeInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # not a pid serve wrote
    if os.name != "posix":  # no cheap check there (signal 0 is not one on Windows)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or a pid we cannot ask about
    return True


def remove_serve_info(state: Path, pid: int) -> None:
    """Remove serve.json, but only when it still names this process."""
    info = read_serve_info(state)
    if info is not None and info.pid == pid:
        with contextlib.suppress(OSError):
            (state / SERVE_INFO).unlink()


# One receiver per state directory ---------------------------------------------------------


class AlreadyRunning(HomeError):
    pass


@contextlib.contextmanager
def serve_lock(state: Path) -> Iterator[None]:
    """Hold the state directory's lock while a receiver runs; a second one is refused.

    An OS lock (not a pid file) so that a receiver killed with SIGKILL leaves nothing stale.
    """
    try:
        lock_file: IO[bytes] = open(state / LOCK, "a+b")  # noqa: SIM115 (held for the run)
    except OSError as exc:
        raise HomeError(
            f"cannot write in the state directory {state}: {exc.strerror}; "
            "choose another with --home or OT_HOOK_HOME"
        ) from None
    try:
        if not _try_lock(lock_file):
            info = read_serve_info(state)
            running = f" (pid {info.pid}, {info.url})" if info else ""
            raise AlreadyRunning(
                f"another ot-hook serve{running} is already using {state}; "
                "stop it or choose another --home"
            )
        yield
    finally:
        lock_file.close()


def _try_lock(lock_file: IO[bytes]) -> bool:
    if sys.platform == "win32":  # best effort on Windows
        import msvcrt

        try:
            msvcrt.locking(lock_file.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
