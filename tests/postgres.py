"""A throwaway PostgreSQL cluster for tests: Debian's postgresql-15 (scripts/setup-machine installs it), run as the
``postgres`` user (initdb refuses root) on a free loopback port with a private socket directory and fsync off.

Traps it handles (see the design page's machine notes): the parent directory must be postgres's; a killed
postmaster's backends outlive it and keep its shared memory, and its pid file blocks a restart until the zombie is
reaped, so ``kill`` kills the backends too and waits for the postmaster to be gone."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from overhaul.aio import cancel_and_wait

BIN = Path("/usr/lib/postgresql/15/bin")
_databases = itertools.count(1)


def available() -> str | None:
    """Why a cluster cannot be made here (None: it can)."""
    if not (BIN / "initdb").exists():
        return f"{BIN}/initdb is missing: run scripts/setup-machine (it installs postgresql-15)"
    if os.geteuid() != 0:
        return "the throwaway cluster is made as the postgres user: the tests must run as root"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def as_postgres(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *command],
        cwd="/tmp",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


class Postgres:
    """One cluster: ``start``, ``stop``, ``kill`` (SIGKILL, backends too), ``url(database)``, ``create_database``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ovh-pg-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        as_postgres(
            str(BIN / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8",
            "--locale=C.UTF-8", "-N",
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        as_postgres(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
            "-o", options, "start",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def postmaster(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends (they outlive it otherwise), and wait until all are gone."""
        pid = self.postmaster()
        if pid is None:
            return
        listed = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], check=False, capture_output=True, text=True)
        children = listed.stdout
        doomed = [pid, *(int(p) for p in children.split())]
        for each in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGKILL)
        # Its pid file names it: a restart is refused while the pid exists, a zombie's too (PID 1 reaps it).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (Path(f"/proc/{pid}").exists() or any(alive(p) for p in doomed)):
            time.sleep(0.05)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database: its URL."""
        name = f"t{os.getpid()}_{next(_databases)}"
        as_postgres(str(BIN / "createdb"), "-h", str(self.root), "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def remove(self) -> None:
        self.stop()
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie counts as gone: it holds nothing but its pid)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class TcpProxy:
    """A TCP proxy on a loopback port in a thread of its own, to a target port: ``cut`` makes it a black hole (open
    connections hang, new ones are accepted and hang: a network partition, not a refusal); ``heal`` drops the
    hung connections and forwards again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.cut_off = False
        self._connections: set[asyncio.Task[None]] = set()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="tcp-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        up_writer: asyncio.StreamWriter | None = None
        try:
            if self.cut_off:
                await asyncio.Event().wait()  # hangs until healed (cancelled) or stopped
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            for each in (writer, up_writer):
                if each is not None:
                    each.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            if self.cut_off:  # a partition: what was sent is never delivered
                await asyncio.Event().wait()
            writer.write(chunk)
            await writer.drain()
        writer.transport.abort()  # the other end closed: this one learns it as it would over a network

    def cut(self) -> None:
        self.cut_off = True

    def heal(self) -> None:
        def drop() -> None:
            self.cut_off = False
            for task in list(self._connections):
                task.cancel()

        self.loop.call_soon_threadsafe(drop)

    def close(self) -> None:
        """Stops serving and ends every connection before the loop stops (a connection left pending would be
        collected later, on a closed loop)."""

        async def stop() -> None:
            self.cut_off = False
            self.server.close()
            await cancel_and_wait(list(self._connections))

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
