"""The local lease: one `overhaul serve` per state directory, held with an advisory lock on a file in it.

The kernel drops the lock when the process dies, however it dies, so a crash never leaves the directory taken."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from overhaul.ports.lease import LeaseHeld


class StateDirLease:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "serve.lock"
        self._fd: int | None = None

    @property
    def token(self) -> int:
        return 1  # one host, one holder at a time: the fencing token of a shared store comes with it

    def acquire(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LeaseHeld(
                f"state directory {self.state_dir} is in use by another overhaul serve (pid {holder}); "
                "stop it, or give this one its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the lock
            self._fd = None
