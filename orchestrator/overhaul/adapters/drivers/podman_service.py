"""Processes that serve the engine API on a socket of their own, supervised: restarted with back-off when they die,
and dying with the orchestrator (even one killed by SIGKILL). A private `podman system service`; an SSH forward of
a host's engine socket (adapters/drivers/ssh.py)."""

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


class SocketProcess:
    """A process serving the engine API on ``socket``: ready when /_ping answers through it, restarted when it dies
    (engine calls meanwhile fail as transient), and it dies with us. Subclasses say what to run."""

    what = "the engine process"
    # Whether its standard error says why it failed (read when it exits); else it goes nowhere.
    keep_stderr = False

    def __init__(self, socket: Path, restart_min: float = 0.2, restart_max: float = 10.0) -> None:
        self.directory = socket.parent
        self.socket = socket
        self.restart_min = restart_min
        self.restart_max = restart_max
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    def command(self) -> list[str]:
        raise NotImplementedError

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
        self._watcher = asyncio.get_running_loop().create_task(self._supervise(), name=self.what)

    async def _spawn(self, timeout: float) -> None:
        args = self.command()
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # left by a process that was killed
        parent = os.getpid()
        self._proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE if self.keep_stderr else asyncio.subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal is for the orchestrator, which stops it in order
            preexec_fn=lambda: _die_with_parent(parent),
        )
        connector = aiohttp.UnixConnector(path=str(self.socket))
        try:
            async with aiohttp.ClientSession(connector=connector) as session, asyncio.timeout(timeout):
                while True:
                    if self._proc.returncode is not None:
                        raise DriverError(f"{self.what} exited with code {self._proc.returncode}{await self._why()}")
                    try:
                        async with session.get("http://podman/_ping", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                            if resp.status == 200:
                                return
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        pass
                    await asyncio.sleep(0.05)  # readiness of a process we just started: nothing to wait on but time
        except TimeoutError:
            raise DriverError(f"{self.what} did not answer on {self.socket} within {timeout}s") from None

    async def _why(self) -> str:
        """What the process said before it exited, when it is kept."""
        if self._proc is None or self._proc.stderr is None:
            return ""
        said = (await self._proc.stderr.read(4096)).decode(errors="replace").strip()
        return f": {said}" if said else ""

    async def _supervise(self) -> None:
        backoff = Backoff(self.restart_min, self.restart_max)
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._stopping:
                return
            log.warning(
                "%s (pid %d) exited with code %s%s: restarting it", self.what, proc.pid, code, await self._why()
            )
            while not self._stopping:
                await backoff.wait()
                try:
                    await self._spawn(30.0)
                except DriverError as exc:
                    log.warning("%s did not come back: %s", self.what, exc)
                    continue
                self.restarts += 1
                backoff.reset()
                log.info("%s restarted (pid %s)", self.what, self.pid)
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


class PodmanService(SocketProcess):
    """A private `podman system service` on a socket of our own. Containers keep running while it is down (conmon
    holds them)."""

    what = "podman system service"

    def __init__(
        self, runtime: str | None, directory: Path, restart_min: float = 0.2, restart_max: float = 10.0
    ) -> None:
        super().__init__(directory / "podman.sock", restart_min, restart_max)
        self.runtime = runtime

    def command(self) -> list[str]:
        podman = shutil.which("podman")
        if podman is None:
            raise DriverError("podman is not installed and no engine socket was configured")
        return [
            podman,
            *(["--runtime", self.runtime] if self.runtime else []),
            "system",
            "service",
            "--time=0",
            self.url,
        ]
