"""`overhaul serve`: the orchestrator as a service — store, engine, health watches, reconcilers, the automatic
upgrade watcher and the REST API; SIGTERM shuts it down gracefully and a restart picks up where it stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from orchestrator.api import build_app
from orchestrator.auto_upgrade import AutoUpgradeSettings, due_upgrade
from orchestrator.drivers.base import Driver
from orchestrator.drivers.engine import EngineDriver, EngineSettings
from orchestrator.drivers.fake import FakeDriver
from orchestrator.health import HealthSettings
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.rollout import StartedBy
from orchestrator.service import Orchestrator, ServiceError
from orchestrator.store import Store

log = logging.getLogger("overhaul.serve")
DEFAULT_PORT = 8480


def default_state_dir() -> Path:
    if "OVERHAUL_STATE_DIR" in os.environ:
        return Path(os.environ["OVERHAUL_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/overhaul")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "overhaul"


@dataclass(frozen=True)
class ServeSettings:
    """Defaults, then a JSON config file, then OVERHAUL_* environment variables, then flags."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    state_dir: str = ""
    # "podman" starts a private podman service; a unix:// URL uses that engine (Docker or Podman);
    # "memory" is an in-memory engine for trying the API without containers.
    engine: str = "podman"
    runtime: str = "runc"
    auto_upgrade_first_delay: float = 30.0
    auto_upgrade_delay: float = 30.0
    probe_interval: float = 1.0
    log_level: str = "info"

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else default_state_dir()


ENV = {f.name: "OVERHAUL_" + f.name.upper() for f in fields(ServeSettings)}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = {f.name: f.type for f in fields(ServeSettings)}[name]
    try:
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            return float(value)
    except (TypeError, ValueError):
        raise SystemExit(f"overhaul serve: {source} {name}: must be a number, got {value!r}") from None
    if not isinstance(value, str):
        raise SystemExit(f"overhaul serve: {source} {name}: must be a string, got {value!r}")
    return value


def load_settings(args: argparse.Namespace) -> ServeSettings:
    settings = ServeSettings()
    known = {f.name for f in fields(ServeSettings)}
    if args.config:
        try:
            doc = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"overhaul serve: --config {args.config}: {exc}") from None
        if not isinstance(doc, Mapping):
            raise SystemExit(f"overhaul serve: --config {args.config}: must hold a JSON object")
        unknown = sorted(set(doc) - known)
        if unknown:
            raise SystemExit(f"overhaul serve: --config {args.config}: unknown setting {unknown[0]!r}")
        settings = replace(settings, **{k: _coerce(k, v, "--config") for k, v in doc.items()})
    from_env = {k: _coerce(k, os.environ[v], v) for k, v in ENV.items() if v in os.environ}
    settings = replace(settings, **from_env)
    from_flags = {k: getattr(args, k) for k in known if getattr(args, k, None) is not None}
    return replace(settings, **from_flags)


def ensure_token(state_dir: Path) -> Path:
    """The API token, made on first start in a file only its owner can read."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path


class AutoUpgrader:
    """Starts platform rolling upgrades when the gallery's latest version is due for a scale set."""

    def __init__(self, service: Orchestrator, settings: AutoUpgradeSettings) -> None:
        self.service = service
        self.settings = settings

    async def check(self) -> float | None:
        """Starts what is due; returns when something next becomes due (None: nothing waits)."""
        store = self.service.store
        next_due: float | None = None
        for model in store.list_scale_sets():
            if self.service.running(model.name):
                continue
            states = await self.service.driver.observe(model.name)
            due = due_upgrade(
                model,
                definitions=store.image_definitions(),
                versions=store.image_versions(),
                instance_versions=[states[i].version if i in states else None for i in range(model.capacity)],
                attempts=[s.attempt for s in store.attempts(model.name)],
                settings=self.settings,
            )
            if due is None:
                continue
            if due.due_at <= time.time():
                log.info("automatic OS upgrade of %s to %s", model.name, due.target.version)
                try:
                    await self.service.start_rolling_upgrade(
                        model.name, started_by=StartedBy.PLATFORM, version=due.target.version
                    )
                except ServiceError as exc:
                    log.warning("automatic OS upgrade of %s not started: %s", model.name, exc.message)
            else:
                next_due = due.due_at if next_due is None else min(next_due, due.due_at)
        return next_due

    async def run(self) -> None:
        while True:
            seen = self.service.changes.version
            next_due = await self.check()
            timeout = None if next_due is None else max(0.05, next_due - time.time())
            await self.service.changes.wait(seen, timeout)


async def serve(settings: ServeSettings, stop: asyncio.Event) -> int:
    state_dir = settings.state_path
    token = ensure_token(state_dir).read_text().strip()
    store = Store(state_dir / "overhaul.db")
    driver: Driver
    engine: EngineDriver | None = None
    if settings.engine == "memory":
        driver = FakeDriver()
    else:
        url = None if settings.engine == "podman" else settings.engine
        engine = EngineDriver(
            EngineSettings(url=url, runtime=settings.runtime or None, config_root=state_dir / "config")
        )
        await engine.start()
        driver = engine
    service = Orchestrator(store, driver, health=HealthSettings(probe_interval=settings.probe_interval))
    metrics = OrchestratorMetrics(service)
    runner = web.AppRunner(
        build_app(service, token, metrics), handle_signals=False, access_log=None, shutdown_timeout=5
    )
    auto = AutoUpgrader(service, AutoUpgradeSettings(settings.auto_upgrade_first_delay, settings.auto_upgrade_delay))
    tasks: list[asyncio.Task[Any]] = []
    try:
        await service.start()
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port, reuse_address=True).start()
        tasks.append(asyncio.create_task(auto.run(), name="auto-upgrade"))
        log.info(
            "serving on http://%s:%d (state in %s, engine %s)", settings.host, settings.port, state_dir, settings.engine
        )
        print(
            f"overhaul: serving on http://{settings.host}:{settings.port}; token in {state_dir / 'token'}", flush=True
        )
        waiter = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        for task in done - {waiter}:
            if task.exception() is not None:
                log.error("%s failed", task.get_name(), exc_info=task.exception())
                return 1
        return 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        await service.close()
        if engine is not None:
            await engine.close()
        store.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.json", help="settings file (keys as the flags, with underscores)")
    parser.add_argument("--host", help=f"address to listen on (default 127.0.0.1; env {ENV['host']})")
    parser.add_argument("--port", type=int, help=f"port to listen on (default {DEFAULT_PORT}; env {ENV['port']})")
    parser.add_argument(
        "--state-dir", dest="state_dir", help=f"database, token and config drives (env {ENV['state_dir']})"
    )
    parser.add_argument(
        "--engine",
        help="podman (a private podman service, the default), unix:///path/to.sock (Docker or Podman), "
        "or memory (no containers, for trying the API)",
    )
    parser.add_argument("--runtime", help="OCI runtime for the private podman service (default runc)")
    parser.add_argument(
        "--auto-upgrade-first-delay",
        dest="auto_upgrade_first_delay",
        type=float,
        help="seconds after publishing before a scale set's first automatic upgrade (default 30)",
    )
    parser.add_argument(
        "--auto-upgrade-delay",
        dest="auto_upgrade_delay",
        type=float,
        help="seconds after publishing before later automatic upgrades (default 30)",
    )
    parser.add_argument(
        "--probe-interval", dest="probe_interval", type=float, help="load-balancer probe period in seconds (default 1)"
    )
    parser.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await serve(settings, stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

    return asyncio.run(run())
