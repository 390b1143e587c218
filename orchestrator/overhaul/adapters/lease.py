"""The local lease: one `overhaul serve` per state directory.

Held two ways, both dropped by the kernel when the process dies, however it dies, so a crash never leaves the
directory taken: an advisory lock on the directory itself, and an abstract Unix socket named after the directory's
path, which outlives the directory: a second serve on the same path is refused even after the first one's
directory was removed or replaced (it would otherwise find nothing locked). While held, ``check`` says whether the
directory and its database are still the ones this serve opened: a state directory removed or replaced underneath
makes every write refused and /healthz unavailable, rather than writes acknowledged into an unlinked file."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import socket
from pathlib import Path

from overhaul.ports.lease import Holder

TOKEN_FILE = "lease.token"  # the last fencing token handed out here


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
    """The Lease port for a state directory (the embedded SQLite store's): the kernel's locks say who holds it, so
    it never expires while its holder lives; it is lost when the directory is replaced underneath."""

    def __init__(self, state_dir: Path, me: Holder, database: str = "overhaul.db") -> None:
        self.state_dir = state_dir
        self.me = me
        self.path = state_dir / "serve.lock"
        self.database = state_dir / database
        self.lost = asyncio.Event()
        self._token: int | None = None
        self._fd: int | None = None
        self._dir_fd: int | None = None
        self._socket: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._database_identity: tuple[int, int] | None = None

    @property
    def token(self) -> int | None:
        return self._token

    async def acquire(self) -> int | None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            named.bind(socket_name(self.state_dir))
        except OSError:
            named.close()
            return None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        dir_fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            os.close(dir_fd)
            named.close()
            return None
        os.ftruncate(fd, 0)
        holder = {"pid": os.getpid(), "name": self.me.name, "address": self.me.address}
        os.write(fd, (json.dumps(holder) + "\n").encode())
        self._fd, self._dir_fd, self._socket = fd, dir_fd, named
        info = os.fstat(dir_fd)
        self._identity = (info.st_dev, info.st_ino)
        self._token = self._next_token()
        self.lost.clear()
        return self._token

    def _next_token(self) -> int:
        """One more than the last holder's (kept in the directory, so a restart's is greater too)."""
        path = self.state_dir / TOKEN_FILE
        try:
            last = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            last = 0
        written = path.with_suffix(".new")
        with open(os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(f"{last + 1}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(written, path)
        return last + 1

    async def renew(self) -> bool:
        if self._fd is None or self.check() is not None:
            self.lost.set()
            return False
        return True

    def valid(self) -> bool:
        return self._fd is not None and not self.lost.is_set()

    async def holder(self) -> Holder | None:
        try:
            recorded = self.path.read_text().strip()
        except OSError:
            return None
        try:
            doc = json.loads(recorded)
            return Holder(str(doc["name"]), str(doc.get("address", "")))
        except (ValueError, KeyError, TypeError):
            return Holder(f"pid {recorded}") if recorded else None  # written by an older serve: its pid

    def held_message(self, holder: Holder | None) -> str:
        who = f"{holder.name}{f', API {holder.address}' if holder.address else ''}" if holder else "unknown"
        return (
            f"state directory {self.state_dir} is in use by another overhaul serve ({who}); "
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

    async def release(self) -> None:
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
        self._token = None
