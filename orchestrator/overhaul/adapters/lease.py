"""The local lease: one `overhaul serve` per state directory.

Held two ways, both dropped by the kernel when the process dies, however it dies, so a crash never leaves the
directory taken: an advisory lock on the directory itself, and an abstract Unix socket named after the directory's
path, which outlives the directory: a second serve on the same path is refused even after the first one's
directory was removed or replaced (it would otherwise find nothing locked). While held, ``check`` says whether the
directory and its database are still the ones this serve opened: a state directory removed or replaced underneath
makes every write refused and /healthz unavailable, rather than writes acknowledged into an unlinked file."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from pathlib import Path

from overhaul.ports.lease import LeaseHeld


def socket_name(state_dir: Path) -> bytes:
    """The abstract socket's name: the absolute path's digest (paths may exceed the 107 bytes a name may have)."""
    digest = hashlib.sha256(os.fsencode(state_dir.absolute())).hexdigest()[:40]
    return b"\0overhaul-serve-" + digest.encode()


def changed(path: Path, identity: tuple[int, int], what: str, kind: str) -> str | None:
    """Why ``path`` is no longer the file system object ``identity`` named (None: it still is)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return f"{what} {path} is gone ({exc.strerror})"
    if (info.st_dev, info.st_ino) != identity:
        return f"{what} {path} was replaced by another {kind}"
    return None


class StateDirLease:
    def __init__(self, state_dir: Path, database: str = "overhaul.db") -> None:
        self.state_dir = state_dir
        self.path = state_dir / "serve.lock"
        self.database = state_dir / database
        self._fd: int | None = None
        self._dir_fd: int | None = None
        self._socket: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._database_identity: tuple[int, int] | None = None

    @property
    def token(self) -> int:
        return 1  # one host, one holder at a time: the fencing token of a shared store comes with it

    def acquire(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            named.bind(socket_name(self.state_dir))
        except OSError:
            named.close()
            raise LeaseHeld(self._held_message()) from None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        dir_fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            os.close(dir_fd)
            named.close()
            raise LeaseHeld(self._held_message()) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd, self._dir_fd, self._socket = fd, dir_fd, named
        info = os.fstat(dir_fd)
        self._identity = (info.st_dev, info.st_ino)

    def _held_message(self) -> str:
        try:
            holder = self.path.read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        return (
            f"state directory {self.state_dir} is in use by another overhaul serve (pid {holder}); "
            "stop it, or give this one its own --state-dir"
        )

    def database_opened(self) -> None:
        """The database file as the store just opened it: a file put in its place later is not it."""
        info = os.stat(self.database)
        self._database_identity = (info.st_dev, info.st_ino)

    def check(self) -> str | None:
        """None while the state directory (and the database, once opened) are the ones this serve holds."""
        if self._identity is None:
            return None
        problem = changed(self.state_dir, self._identity, "the state directory", "directory")
        if problem is None and self._database_identity is not None:
            problem = changed(self.database, self._database_identity, "the database", "file")
        return problem

    def release(self) -> None:
        for fd in (self._fd, self._dir_fd):
            if fd is not None:
                if fd == self._fd:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, 0)
                os.close(fd)  # closing drops the lock
        self._fd = self._dir_fd = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._identity = self._database_identity = None
