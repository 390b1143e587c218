"""QEMU's machine protocol (QMP) over a unix socket, and a graceful power-off built on it: what the VM driver asks of
a daemonized QEMU. QEMU serves one QMP client at a time, so a session is opened, used and closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from types import TracebackType
from typing import Any

from overhaul.ports.driver import DriverError, EngineUnavailable


class QmpError(DriverError):
    """QEMU answered a command with an error (its class and description)."""


class Qmp:
    """One QMP session: ``async with Qmp(path) as qmp: await qmp.execute("query-status")``."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Qmp:
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_unix_connection(str(self.path))
                await self._message()  # the greeting
                await self.execute("qmp_capabilities")
        except DriverError:
            await self.__aexit__(None, None, None)
            raise
        except (OSError, TimeoutError, ValueError) as exc:
            await self.__aexit__(None, None, None)
            raise EngineUnavailable(f"QMP at {self.path}: {exc or type(exc).__name__}") from exc
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def _message(self) -> dict[str, Any]:
        assert self._reader is not None
        line = await self._reader.readline()
        if not line:
            raise EngineUnavailable(f"QMP at {self.path}: QEMU closed the connection")
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise EngineUnavailable(f"QMP at {self.path}: a message that is not a JSON object")
        return doc

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Runs ``command``; its ``return``, or QmpError. Events that arrive meanwhile are passed over."""
        assert self._writer is not None
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            async with asyncio.timeout(self.timeout):
                self._writer.write(json.dumps(request).encode() + b"\n")
                await self._writer.drain()
                while True:
                    doc = await self._message()
                    if "return" in doc:
                        return doc["return"]
                    if "error" in doc:
                        error = doc["error"]
                        raise QmpError(f"QMP {command}: {error.get('class')}: {error.get('desc')}")
        except (OSError, TimeoutError, ValueError) as exc:
            raise EngineUnavailable(f"QMP {command} at {self.path}: {exc or type(exc).__name__}") from exc


async def exited(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (not necessarily our child: QEMU daemonizes) ends within ``timeout``; told by the kernel
    through a pidfd, not by polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(fd, gone.set)
    try:
        async with asyncio.timeout(timeout):
            await gone.wait()
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def power_off(qmp_path: Path, pid: int, stop_timeout: float, *, retry_every: float = 2.0) -> bool:
    """Asks the guest to shut down (ACPI power button), again while it does not (a guest still booting drops the
    request), and ends QEMU after ``stop_timeout``. True when the guest shut down by itself."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + stop_timeout
    while loop.time() < deadline:
        with contextlib.suppress(DriverError):
            async with Qmp(qmp_path, timeout=min(10.0, retry_every * 5)) as qmp:
                await qmp.execute("system_powerdown")
        if await exited(pid, min(retry_every, max(0.0, deadline - loop.time()))):
            return True
    with contextlib.suppress(DriverError):
        async with Qmp(qmp_path) as qmp:
            await qmp.execute("quit")
    if not await exited(pid, 10.0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await exited(pid, 10.0)
    return False
