"""overhaul-agent: probe the local application and serve its health, like Azure's Application Health."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import resource
import signal
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from overhaul_agent import __version__, logs
from overhaul_agent.board import HealthBoard
from overhaul_agent.extensions import ExtensionRunner
from overhaul_agent.gate import BACKLOG, GatedSite
from overhaul_agent.metadata import InstanceMetadata, load_json_file, parse_metadata
from overhaul_agent.metrics import AgentMetrics
from overhaul_agent.platform import PlatformNotices
from overhaul_agent.probe import ApplicationProbe, probe_forever, tls_context
from overhaul_agent.probe_body import ProbeResult
from overhaul_agent.server import TcpHealthPort, build_app
from overhaul_agent.settings import ProbeSettings, SettingsError, parse_settings
from overhaul_agent.systemd_notify import notify, watchdog_interval

log = logging.getLogger("overhaul.agent")
SHUTDOWN_TIMEOUT = 1.0
# A keep-alive connection idle this long between requests is closed (it holds a connection slot meanwhile).
KEEPALIVE_TIMEOUT = 15.0

EPILOG = """\
Probe settings come from, lowest precedence first: the ApplicationHealthLinux extension in the metadata
document, the --settings file, then --probe KEY=VALUE flags (VALUE is JSON, e.g. --probe port=8080
--probe overhaul.fastProbes=true). The keys are Azure's: protocol, port, requestPath, intervalInSeconds,
numberOfProbes, gracePeriod; overhaul's own extras live under "overhaul" (probeTimeoutInSeconds, verifyTls,
caFile, fastProbes, host).

Endpoints: GET /health (200 when Healthy, else 503; ?wait=S&etag=E blocks until the verdict changes),
GET /metrics (Prometheus), and the TCP health port, which accepts connections only while Healthy.
"""


@dataclass(frozen=True)
class AgentConfig:
    settings: ProbeSettings | None
    metadata: InstanceMetadata
    host: str
    port: int
    tcp_port: int | None
    state_dir: Path
    max_connections: int = 1000
    header_timeout: float = 10.0
    # Platform notices (platform.json) sit beside the metadata file on the config drive.
    metadata_path: str | None = None
    # Notices the orchestrator pushes (a VM's config drive cannot change): they live as long as the instance runs.
    runtime_dir: Path | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overhaul-agent",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--settings", metavar="FILE.json", help="Application Health extension settings object")
    parser.add_argument(
        "--metadata",
        metavar="FILE.json",
        help="instance metadata document from the orchestrator (platform.json beside it: platform notices)",
    )
    parser.add_argument("--probe", metavar="KEY=VALUE", action="append", default=[], help="override one probe setting")
    parser.add_argument("--host", default="0.0.0.0", help="address to serve on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8090, help="HTTP port for /health and /metrics (default: %(default)s)"
    )
    parser.add_argument(
        "--tcp-port", type=int, default=8091, help="TCP health port, 0 to disable (default: %(default)s)"
    )
    parser.add_argument(
        "--state-dir",
        default="/var/lib/overhaul-agent",
        type=Path,
        help="where extension states and logs are kept, on the OS disk (default: %(default)s)",
    )
    parser.add_argument(
        "--runtime-dir",
        default="/run/overhaul-agent",
        type=Path,
        help="where platform notices pushed by the orchestrator are kept until the instance stops "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        help="open HTTP connections at most; at the cap the oldest that sent no request yet is closed "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection may take to send its request head (default: %(default)s)",
    )
    parser.add_argument("--check", action="store_true", help="validate the configuration, print it, and exit")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format",
        default="text",
        choices=list(logs.FORMATS),
        help="text, or json (one object per line); under systemd lines carry journald priorities",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _apply_override(doc: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise SettingsError("--probe", f"expected KEY=VALUE, got {item!r}")
    try:
        value: Any = json.loads(raw)
    except RecursionError as exc:
        raise SettingsError("--probe", f"{item[:60]!r}: nested too deeply") from exc
    except ValueError:
        value = raw  # a bare word such as http or /health
    *parents, leaf = key.split(".")
    target = doc
    for part in parents:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise SettingsError(f"settings.{part}", "must be a JSON object")
        target = child
    target[leaf] = value


def _unwrap_settings(doc: Any) -> Any:
    # Accept a whole extension properties object ({"settings": {...}}) as well as the bare settings.
    if isinstance(doc, Mapping) and "settings" in doc and set(doc) <= {"settings", "protectedSettings"}:
        return doc["settings"]
    return doc


def load_config(args: argparse.Namespace) -> AgentConfig:
    metadata = parse_metadata(load_json_file(args.metadata, "--metadata")) if args.metadata else InstanceMetadata()
    merged: dict[str, Any] = {}
    if metadata.health_settings is not None:
        merged.update(json.loads(json.dumps(metadata.health_settings)))
    if args.settings:
        from_file = _unwrap_settings(load_json_file(args.settings, "--settings"))
        if not isinstance(from_file, Mapping):
            raise SettingsError("settings", f"{args.settings} must hold a JSON object")
        merged.update(from_file)
    for item in args.probe:
        _apply_override(merged, item)
    settings = parse_settings(merged) if merged else None
    if settings is not None:
        try:
            tls_context(settings)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise SettingsError("settings.overhaul.caFile", f"cannot load {settings.ca_file}: {reason}") from exc
    if settings is None and not metadata.extensions:
        raise SettingsError(
            "settings",
            "nothing to do: give --settings FILE.json, --probe flags, or --metadata with extensions",
        )
    for flag, port in (("--port", args.port), ("--tcp-port", args.tcp_port)):
        if not 0 <= port <= 65535:
            raise SettingsError(flag, f"must be 0..65535, got {port}")
    if args.max_connections < 1:
        raise SettingsError("--max-connections", f"must be at least 1, got {args.max_connections}")
    if not 0 < args.header_timeout <= 3600:
        raise SettingsError(
            "--header-timeout", f"must be above 0 and at most 3600 seconds, got {args.header_timeout:g}"
        )
    return AgentConfig(
        settings=settings,
        metadata=metadata,
        host=args.host,
        port=args.port,
        tcp_port=args.tcp_port or None,
        state_dir=args.state_dir,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        metadata_path=args.metadata,
        runtime_dir=args.runtime_dir,
    )


# File descriptors kept free of client connections: probes, extension scripts, /proc reads, logs; and twice the
# listen backlog, as one loop iteration may accept a backlog's worth of connections and close as many evicted ones.
RESERVED_FILES = 128 + 2 * BACKLOG


def connection_limit(wanted: int) -> int:
    """The connection cap: what was asked, within the open-files limit less what the agent itself needs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVED_FILES))


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
        limit = connection_limit(self.config.max_connections)
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


async def serve(config: AgentConfig) -> int:
    agent = Agent(config)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, agent.stop.set)
    try:
        return await agent.run()
    finally:
        for sig in signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        config = load_config(args)
    except SettingsError as exc:
        print(f"overhaul-agent: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(
            json.dumps(
                {
                    "settings": config.settings.to_json() if config.settings else None,
                    "extensions": [e.name for e in config.metadata.extensions],
                },
                indent=2,
            )
        )
        return 0
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
