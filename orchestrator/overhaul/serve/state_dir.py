"""The state directory's own rules: only the service user reaches it (0700 whatever the umask), and the API token
in it is a private, non-trivial secret written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

TOKEN_FILE = "token"
# Where the API listens, written on every start: the CLI's default endpoint.
ENDPOINT_FILE = "endpoint"
# What a caller of the managed identity endpoint presents (X-IDENTITY-HEADER).
IDENTITY_SECRET_FILE = "identity.secret"
# token_urlsafe(32) gives 43 characters; anything much shorter is guessable or a mistake.
MIN_TOKEN_CHARS = 32


class StateDirError(Exception):
    """The state directory or a file in it cannot be used as it is: the message names it and says what to do."""


def make_private(state_dir: Path) -> None:
    """Creates the directory 0700, or closes an existing one to its owner (its files hold secrets)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = state_dir.stat()
    if info.st_uid != os.geteuid():
        raise StateDirError(
            f"state directory {state_dir} is owned by uid {info.st_uid}, not by this user ({os.geteuid()})"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        state_dir.chmod(0o700)


def fsync_directory(directory: Path) -> None:
    """Makes a new or renamed entry of ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """``path`` replaced atomically by a 0600 file holding ``data``, synced to disk with its directory entry."""
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)


def read_token(path: Path) -> str:
    """The token in ``path``, refused unless it is a regular file of this user's, 0600 (or stricter), of at least
    MIN_TOKEN_CHARS printable characters."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise StateDirError(f"token file {path} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StateDirError(f"token file {path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise StateDirError(
                f"token file {path} is owned by uid {info.st_uid}, not by this user ({os.geteuid()}): "
                f"chown it, or remove it to have a new one made"
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise StateDirError(
                f"token file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}): it must be 0600; "
                f"run chmod 600 {path}, and since others could read it, consider removing it to have a new one made"
            )
        raw = f.read(4096)
    token = raw.decode("utf-8", "replace").strip()
    if not token:
        raise StateDirError(f"token file {path} is empty: remove it to have a new one made, or write a token in it")
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or any(c.isspace() for c in token):
        raise StateDirError(
            f"token file {path} must hold one token of at least {MIN_TOKEN_CHARS} printable characters and no spaces"
            f" (it holds {len(token)}); remove it to have a new one made"
        )
    return token


def ensure_token(state_dir: Path, name: str = TOKEN_FILE) -> str:
    """The API token (or another secret of the state directory, ``name``): made on first start (atomically,
    synced), checked on every later one."""
    path = state_dir / name
    if not os.path.lexists(path):
        write_private(path, (secrets.token_urlsafe(32) + "\n").encode())
    return read_token(path)
