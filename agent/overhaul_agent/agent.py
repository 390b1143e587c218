"""The running agent: the probe, the extensions, the health board and the servers, with every background task
supervised and cancelled on shutdown."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from overhaul_agent.board import HealthBoard
from overhaul_agent.config import AgentConfig
from overhaul_agent.extensions import ExtensionRunner
from overhaul_agent.gate import BACKLOG, GatedSite, connection_limit
from overhaul_agent.metrics import AgentMetrics
from overhaul_agent.platform import PlatformNotices
from overhaul_agent.probe import ApplicationProbe, probe_forever
from overhaul_agent.probe_body import ProbeResult
from overhaul_agent.server import TcpHealthPort, build_app
from overhaul_agent.systemd_notify import notify, watchdog_interval

log = logging.getLogger("overhaul.agent")
SHUTDOWN_TIMEOUT = 1.0
# A keep-alive connection idle this long between requests is closed (it holds a connection slot meanwhile).
KEEPALIVE_TIMEOUT = 15.0


# File descriptors kept free of client connections: probes, extension scripts, /proc reads, logs; and twice the
# listen backlog, as one loop iteration may accept a backlog's worth of connections and close as many evicted ones.
RESERVED_FILES = 128 + 2 * BACKLOG


class Agent:
    """Wires the probe, the extensions, the board and the servers; owns every background task."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.board = HealthBoard(config.metadata, config.settings)
        self.metrics = AgentMetrics()
        self.metrics.bind(self.board)
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._tcp_port: TcpHealthPort | None = None
        self._probe: ApplicationProbe | None = None
        self.http_port: int | None = None
        self.site: GatedSite | None = None

    def _on_probe(self, result: ProbeResult) -> None:
        self.metrics.on_probe(result)
        self.board.record_probe(result)

    async def start_servers(self) -> None:
        limit = connection_limit(self.config.max_connections, RESERVED_FILES)
        self._runner = web.AppRunner(
            build_app(
                self.board,
                self.metrics,
                PlatformNotices.beside(
                    self.config.metadata_path,
                    runtime_dir=self.config.runtime_dir,
                    token=self.config.metadata.platform_token,
                ),
                connection_limit=limit,
            ),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )
        await self._runner.setup()
        self.site = GatedSite(
            self._runner,
            self.config.host,
            self.config.port,
            limit=limit,
            header_timeout=self.config.header_timeout,
        )
        await self.site.start()
        self.http_port = int(self._runner.addresses[0][1])
        if self.config.tcp_port is not None:
            self._tcp_port = TcpHealthPort(self.config.host, self.config.tcp_port)
            self.board.add_listener(self._tcp_port.on_verdict)
            self._tcp_port.on_verdict(self.board)
        self.board.add_listener(self._notify_status)

    def _notify_status(self, board: HealthBoard) -> None:
        notify(f"STATUS={board.state.value}: {board.verdict.reason}"[:400])

    async def provision_and_probe(self) -> None:
        runner = ExtensionRunner(self.config.metadata.extensions, self.config.state_dir, self.board)
        await runner.run()
        if self.config.settings is None:
            return
        self._probe = ApplicationProbe(self.config.settings)
        self.board.start_probing()
        await probe_forever(self._probe, self.config.settings.interval, self._on_probe, self.stop)

    async def _watchdog(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def run(self) -> int:
        """Serve until ``stop`` is set; 0 on a clean stop, 1 when a background task failed or the port is taken."""
        try:
            await self.start_servers()
        except OSError as exc:
            # Said in one line, not a traceback; exit 1 (not 2): under systemd the holder may be gone at the restart.
            reason = exc.strerror or str(exc)
            print(f"overhaul-agent: cannot listen on {self.config.host}:{self.config.port}: {reason}", file=sys.stderr)
            await self.shutdown([])
            return 1
        notify("READY=1")
        self.ready.set()
        log.info("serving on %s:%s (TCP health port %s)", self.config.host, self.http_port, self.config.tcp_port)
        tasks = [asyncio.create_task(self.provision_and_probe(), name="provision-and-probe")]
        ping = watchdog_interval()
        if ping:
            tasks.append(asyncio.create_task(self._watchdog(ping), name="watchdog"))
        stopper = asyncio.create_task(self.stop.wait(), name="stop")
        code = 0
        try:
            pending = {stopper, *tasks}
            while not self.stop.is_set():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopper}:
                    if task.exception() is not None:
                        log.error("%s failed", task.get_name(), exc_info=task.exception())
                        code = 1
                        self.stop.set()
                if not pending - {stopper}:
                    await stopper  # nothing left to supervise (e.g. extensions only): serve until stopped
        finally:
            await self.shutdown([stopper, *tasks])
        return code

    async def shutdown(self, tasks: Sequence[asyncio.Task[Any]]) -> None:
        notify("STOPPING=1")
        self.stop.set()
        self.board.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tcp_port is not None:
            self._tcp_port.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._probe is not None:
            await self._probe.close()
