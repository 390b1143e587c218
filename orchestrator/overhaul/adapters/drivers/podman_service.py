"""A private `podman system service` on a socket of its own, supervised: restarted with back-off when it dies, and
it dies with the orchestrator (even one killed by SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
from pathlib import Path

import aiohttp

from overhaul.aio import Backoff
from overhaul.ports.driver import DriverError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the child before exec: the kernel sends SIGTERM when the orchestrator dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class PodmanService:
    """A private `podman system service` on a socket of our own: restarted when it dies, and it dies with us.

    Containers keep running while it is down (conmon holds them); engine calls meanwhile fail as transient."""

    def __init__(
        self, runtime: str | None, directory: Path, restart_min: float = 0.2, restart_max: float = 10.0
    ) -> None:
        self.runtime = runtime
        self.directory = directory
        self.socket = directory / "podman.sock"
        self.restart_min = restart_min
        self.restart_max = restart_max
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def up(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, timeout: float = 30.0) -> None:
        await self._spawn(timeout)
        self._watcher = asyncio.get_running_loop().create_task(self._supervise(), name="podman-service")

    async def _spawn(self, timeout: float) -> None:
        podman = shutil.which("podman")
        if podman is None:
            raise DriverError("podman is not installed and no engine socket was configured")
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # left by a service that was killed
        args = [podman]
        if self.runtime:
            args += ["--runtime", self.runtime]
        args += ["system", "service", "--time=0", self.url]
        parent = os.getpid()
        self._proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal is for the orchestrator, which stops it in order
            preexec_fn=lambda: _die_with_parent(parent),
        )
        connector = aiohttp.UnixConnector(path=str(self.socket))
        try:
            async with aiohttp.ClientSession(connector=connector) as session, asyncio.timeout(timeout):
                while True:
                    if self._proc.returncode is not None:
                        raise DriverError(f"podman system service exited with code {self._proc.returncode}")
                    try:
                        async with session.get("http://podman/_ping", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                            if resp.status == 200:
                                return
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        pass
                    await asyncio.sleep(0.05)  # readiness of a process we just started: nothing to wait on but time
        except TimeoutError:
            raise DriverError(f"podman system service did not answer on {self.socket} within {timeout}s") from None

    async def _supervise(self) -> None:
        backoff = Backoff(self.restart_min, self.restart_max)
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._stopping:
                return
            log.warning("podman system service (pid %d) exited with code %s: restarting it", proc.pid, code)
            while not self._stopping:
                await backoff.wait()
                try:
                    await self._spawn(30.0)
                except DriverError as exc:
                    log.warning("podman system service did not come back: %s", exc)
                    continue
                self.restarts += 1
                backoff.reset()
                log.info("podman system service restarted (pid %s)", self.pid)
                break

    async def stop(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self._proc.wait()
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
