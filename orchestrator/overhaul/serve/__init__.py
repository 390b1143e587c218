"""`overhaul serve`: the orchestrator as a service — store, engine, health watches, supervised attempts, the
automatic upgrade watcher and the REST API. SIGTERM or SIGINT stops it gracefully within a deadline (a second
signal forces the exit); a restart picks up every attempt where it stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import ssl
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from overhaul.adapters.drivers.engine import EngineDriver, EngineSettings, Ulimit
from overhaul.adapters.drivers.fenced import FencedDriver
from overhaul.adapters.drivers.hosts import HostRouter, engine_drivers, memory_drivers, placed_hosts
from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.drivers.qemu import QemuDriver, QemuSettings
from overhaul.adapters.drivers.router import KindRouter
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.http.app import build_app
from overhaul.adapters.http.gate import BACKLOG, GatedSite, connection_limit
from overhaul.adapters.http.metrics import OrchestratorMetrics
from overhaul.adapters.lease import StateDirLease
from overhaul.adapters.lease_postgresql import PostgresLease
from overhaul.adapters.store.postgresql import PostgresStore, SchemaTooNew, redacted
from overhaul.adapters.store.postgresql_hints import PostgresHints
from overhaul.adapters.store.sqlite import SqliteStore, StoreDamaged
from overhaul.adapters.webhook import WebhookDeliverer
from overhaul.aio import Backoff, cancel_and_wait, restarting
from overhaul.ports.driver import Driver, DriverError, HostStatuses, ImageCopies
from overhaul.ports.lease import Fence, Holder, LeaseLost
from overhaul.ports.store import Store, StoreUnavailable
from overhaul.runtime import verdicts
from overhaul.runtime.auto_upgrader import AutoUpgrader
from overhaul.runtime.leadership import Duty, Leadership, LeadershipSettings
from overhaul.runtime.orchestrator import Orchestrator
from overhaul.serve import logs
from overhaul.serve.settings import ServeSettings, SettingsError, add_arguments, load_settings, parse_ulimits
from overhaul.serve.state_dir import (
    ENDPOINT_FILE,
    IDENTITY_SECRET_FILE,
    TOKEN_FILE,
    StateDirError,
    ensure_token,
    make_private,
    write_private,
)
from overhaul.serve.tls import (
    TlsFiles,
    adopt_ca,
    ca_path,
    client_context,
    local_ca_pems,
    local_certificate,
    server_context,
    server_names,
)

log = logging.getLogger("overhaul.serve")


# Open files serve needs besides API connections: the database, engine and agent-watch connections (one per
# watched instance up to this many), the private Podman service's pipes, the listening sockets' backlogs.
RESERVED_FILES = 512 + 2 * BACKLOG
# Seconds between a standby's reads of the leader's health verdicts.
VERDICTS_EVERY = 1.0


def engine_settings(settings: ServeSettings, fence: Fence) -> EngineSettings:
    section = settings.engine
    return EngineSettings(
        fence=fence,
        url=section.url,
        runtime=section.runtime or None,
        ulimits=tuple(Ulimit(name, soft, hard) for name, soft, hard in parse_ulimits(section.ulimits)),
        config_root=settings.state_path / "config",
        call_timeout=section.call_timeout,
        docker_systemd=section.docker_systemd,
        publish_address=section.publish_address,
        service_dir=settings.state_path / "podman",
        service_restart_min=section.service_restart_min,
        service_restart_max=section.service_restart_max,
    )


@dataclass
class Drivers:
    """What a driver factory made: the driver the runtime uses, and what serve must close at the end."""

    driver: Driver
    closing: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    hosts: HostStatuses | None = None  # what the drivers know of the hosts' engines
    copies: ImageCopies | None = None  # what copies the gallery's images to the hosts

    async def close(self) -> None:
        for close in self.closing:
            await close()


async def engine_and_vms(settings: ServeSettings, store: Store, fence: Fence) -> Drivers:
    """Containers through the engine API (a private Podman service, or the engine at the URL) and the hosts'
    engines, VMs through QEMU."""
    base = engine_settings(settings, fence)
    engine = EngineDriver(base)
    try:
        await engine.start()
    except DriverError:
        await engine.close()
        raise
    vms = QemuDriver(QemuSettings(root=settings.state_path / "vms", publish_address=settings.engine.publish_address))
    router = HostRouter(KindRouter(engine, vms), engine_drivers(base), placed_hosts(store), source=engine)
    return Drivers(router, [engine.close, router.close_hosts], router, router)


async def memory(settings: ServeSettings, store: Store, fence: Fence) -> Drivers:
    local = MemoryDriver()
    router = HostRouter(local, memory_drivers(), placed_hosts(store), source=local)
    return Drivers(router, [router.close_hosts], router, router)


# settings.engine.kind -> the factory of its drivers.
# ``fence``: asked before each engine request that changes something (bound to the lease with a shared store).
DRIVERS: dict[str, Callable[[ServeSettings, Store, Fence], Awaitable[Drivers]]] = {
    "podman": engine_and_vms,
    "url": engine_and_vms,
    "memory": memory,
}


async def serve(settings: ServeSettings, stop: asyncio.Event) -> int:
    state_dir = settings.state_path
    try:
        make_private(state_dir)
    except (StateDirError, OSError) as exc:
        print(f"overhaul serve: {exc}", file=sys.stderr)
        return 2
    me = Holder(f"{socket.gethostname()} pid {os.getpid()}", settings.http.url)
    lease = StateDirLease(state_dir, me, "overhaul.db" if settings.shared_store else str(settings.database))
    if await lease.acquire() is None:
        print(f"overhaul serve: {lease.held_message(await lease.holder())}", file=sys.stderr)
        return 1
    try:
        token = ensure_token(state_dir)
        identity = ensure_token(state_dir, IDENTITY_SECRET_FILE) if settings.http.managed_identity else ""
        tls = tls_context(settings)
    except (StateDirError, OSError) as exc:
        await lease.release()
        print(f"overhaul serve: {exc}", file=sys.stderr)
        return 2
    try:
        return await _serve(settings, stop, Secrets(token, identity), lease, tls)
    finally:
        await lease.release()


def tls_context(settings: ServeSettings) -> ssl.SSLContext | None:
    """The API's TLS: the operator's certificate, or the local CA's (made on first start), or none."""
    http = settings.http
    if http.tls_cert:
        return server_context(TlsFiles(Path(http.tls_cert), Path(http.tls_key), None))
    if uses_local_ca(settings):
        advertised = urllib.parse.urlsplit(http.advertise_url).hostname or ""
        return server_context(local_certificate(settings.state_path, server_names(http.host, advertised)))
    return None


def uses_local_ca(settings: ServeSettings) -> bool:
    return settings.http.tls == "auto" and not settings.http.tls_cert


async def shared_ca(store: PostgresStore, state_dir: Path) -> None:
    """One local CA for every replica (``--tls auto``): the first one's, kept in the shared store as the API token
    is, so that a client trusting one replica's ca.pem trusts them all and a standby's forward to the leader is
    trusted. Its key is as secret as the token, and kept alike."""
    cert, key = local_ca_pems(state_dir)
    shared = json.loads(await store.shared_setting("tls_ca", json.dumps({"cert": cert, "key": key})))
    if adopt_ca(state_dir, shared["cert"], shared["key"]):
        log.info("the local CA is the shared store's (written to %s)", ca_path(state_dir))


def announce(settings: ServeSettings, url: str) -> None:
    """Says where the API is, in the log and on stdout, and in STATE_DIR/endpoint for the CLI."""
    state_dir = settings.state_path
    store = redacted(settings.store) if settings.shared_store else str(settings.database)
    log.info("serving on %s (state in %s, store %s, engine %s)", url, state_dir, store, settings.engine.engine)
    write_private(state_dir / ENDPOINT_FILE, (url + "\n").encode())
    trust = f"; clients trust {ca_path(state_dir)}" if settings.http.tls == "auto" else ""
    print(f"overhaul: serving on {url}; token in {state_dir / 'token'}{trust}", flush=True)


async def open_store(settings: ServeSettings, lease: StateDirLease) -> Store:
    if settings.shared_store:
        return await PostgresStore.open(settings.store, settings.history)
    store = SqliteStore(settings.database, settings.history, guard=lease.check)
    lease.database_opened()
    return store


async def shared_token(store: PostgresStore, token: str, state_dir: Path) -> str:
    """One API token for every replica: the first one's, kept in the shared store and in each state directory."""
    shared = await store.shared_setting("api_token", token)
    if shared != token:
        write_private(state_dir / TOKEN_FILE, (shared + "\n").encode())
        log.info("the API token is the shared store's (written to %s)", state_dir / TOKEN_FILE)
    return shared


def fence_of(lease: PostgresLease) -> Callable[[], int]:
    """The token a write is made under: refused (LeaseLost) unless this replica holds the lease now."""

    def token() -> int:
        if not lease.valid() or lease.token is None:
            raise LeaseLost("this orchestrator is not the leader: the write was not made")
        return lease.token

    return token


async def _open(settings: ServeSettings, lease: StateDirLease, token: str) -> tuple[Store, str] | int:
    """The store, and the API token (the shared store's when there is one); or the exit code."""
    try:
        store = await open_store(settings, lease)
    except (SchemaTooNew, StoreUnavailable) as exc:  # not a setting: trying again later may work
        print(f"overhaul serve: {exc}", file=sys.stderr)
        return 1
    except (StoreDamaged, sqlite3.DatabaseError, OSError) as exc:
        print(f"overhaul serve: {exc}", file=sys.stderr)
        return 2
    if isinstance(store, PostgresStore):
        try:
            token = await shared_token(store, token, settings.state_path)
            if uses_local_ca(settings):
                await shared_ca(store, settings.state_path)
        except (StoreUnavailable, StateDirError, OSError, ValueError, KeyError) as exc:
            await store.close()
            print(f"overhaul serve: {exc}", file=sys.stderr)
            return 1
    return store, token


@dataclass
class Assembled:
    """The orchestrator over its store and drivers, its API, and (with a shared store) its leadership."""

    orchestrator: Orchestrator
    app: web.Application
    duties: list[Duty]
    shared: PostgresLease | None
    leadership: Leadership | None
    hints: PostgresHints | None = None


@dataclass(frozen=True)
class Secrets:
    token: str  # the API token
    identity: str  # what callers of the managed identity endpoint present ("": the endpoint is off)


def assemble(settings: ServeSettings, store: Store, drivers: Drivers, secrets: Secrets, fence: Fence) -> Assembled:
    shared = shared_lease(settings, store)
    if shared is not None:
        fence.bind(shared.valid, lambda: shared.token)
    monitor = HealthMonitor(settings.health)
    orchestrator = Orchestrator(
        store,
        drivers.driver if shared is None else FencedDriver(drivers.driver, fence),
        monitor,
        settings=settings.rollout,
        host_statuses=drivers.hosts,
        image_copies=drivers.copies,
    )
    if shared is not None:
        orchestrator.scale_sets.vms_refused = (
            "VM scale sets are not supported with a shared store: a VM lives on one machine's disk, and a leader "
            "elsewhere would find none and make new ones; serve them from an orchestrator with a store of its own"
        )
    metrics = OrchestratorMetrics(orchestrator)
    duties = leader_duties(settings, orchestrator, store, metrics)
    leadership = None
    hints = PostgresHints(settings.store) if shared is not None else None
    if shared is not None:
        duties.append(("health verdicts", lambda: verdicts.record(monitor, store)))
        leading = leadership = Leadership(
            shared,
            orchestrator,
            duties,
            leadership_settings(settings),
            standby_duties=[("health verdicts", lambda: verdicts.follow(monitor, store, VERDICTS_EVERY, hints))],
            before_leading=monitor.forget_adopted,
            hints=hints,
        )
        metrics.watch_leadership(lambda: leading.leader, lambda: shared.token, lambda: shared.takeovers)
    app = build_app(
        orchestrator,
        secrets.token,
        metrics,
        body_timeout=settings.http.body_timeout,
        handshake_timeout=settings.events.timeout,
        max_body_bytes=settings.http.max_body_bytes,
        leadership=leadership,
        trusted_proxies=settings.http.proxies,
        identity_secret=secrets.identity,
        forward_tls=client_context(ca_path(settings.state_path)) if uses_local_ca(settings) else None,
    )
    return Assembled(orchestrator, app, duties, shared, leadership, hints)


async def _serve(
    settings: ServeSettings, stop: asyncio.Event, secrets: Secrets, lease: StateDirLease, tls: ssl.SSLContext | None
) -> int:
    opened = await _open(settings, lease, secrets.token)
    if isinstance(opened, int):
        return opened
    store, token = opened
    if isinstance(store, PostgresStore) and uses_local_ca(settings):
        try:
            tls = tls_context(settings)  # signed by the shared CA, which may not be the one this replica made
        except (StateDirError, OSError) as exc:
            await store.close()
            print(f"overhaul serve: {exc}", file=sys.stderr)
            return 2
    try:
        fence = Fence()
        drivers = await DRIVERS[settings.engine.kind](settings, store, fence)
    except DriverError as exc:
        print(f"overhaul serve: the container engine could not be started: {exc}", file=sys.stderr)
        await store.close()
        return 1
    parts = assemble(settings, store, drivers, replace(secrets, token=token), fence)
    runner = web.AppRunner(parts.app, handle_signals=False, access_log=None, shutdown_timeout=5)
    tasks: list[asyncio.Task[Any]] = []
    try:
        if parts.leadership is None:
            await parts.orchestrator.start()
        await runner.setup()
        site = GatedSite(
            runner,
            settings.http.host,
            settings.http.port,
            limit=connection_limit(settings.http.max_connections, RESERVED_FILES, floor=16),
            header_timeout=settings.http.header_timeout,
            ssl_context=tls,
        )
        try:
            await site.start()
        except OSError as exc:
            print(f"overhaul serve: cannot listen on {settings.http.host}:{settings.http.port}: {exc}", file=sys.stderr)
            return 1
        if parts.leadership is None:
            tasks += [asyncio.create_task(restarting(n, duty, backoff(settings)), name=n) for n, duty in parts.duties]
        else:
            tasks.append(asyncio.create_task(parts.leadership.run(), name="leadership"))
        if parts.hints is not None:
            tasks.append(asyncio.create_task(parts.hints.run(), name="hints"))
        announce(settings, replace(settings.http, port=site.port).url)
        await stop.wait()
        return 0
    finally:
        async with asyncio.timeout(settings.shutdown_timeout):
            await cancel_and_wait(tasks)
            if parts.shared is not None:
                await parts.shared.release()  # a standby takes over at once, not after the lease's TTL
            await runner.cleanup()
            await parts.orchestrator.close()
            await drivers.close()
        await store.close()


def shared_lease(settings: ServeSettings, store: Store) -> PostgresLease | None:
    """The shared store's lease, and its writes fenced by it (None: the store is this orchestrator's alone)."""
    if not isinstance(store, PostgresStore):
        return None
    address = settings.http.advertise_url or settings.http.url
    me = Holder(f"{socket.gethostname()} pid {os.getpid()}", address.rstrip("/"))
    section = settings.lease
    lease = PostgresLease(
        settings.store, me, ttl=section.ttl, renew_every=section.renew_every, max_skew=section.max_skew
    )
    store.fence_with(fence_of(lease))
    return lease


def leadership_settings(settings: ServeSettings) -> LeadershipSettings:
    return LeadershipSettings(
        renew_every=settings.lease.renew_every,
        retry=settings.lease.renew_every,
        restart_min=settings.rollout.restart_min,
        restart_max=settings.rollout.restart_max,
    )


def backoff(settings: ServeSettings) -> Backoff:
    return Backoff(settings.rollout.restart_min, settings.rollout.restart_max)


def leader_duties(
    settings: ServeSettings, orchestrator: Orchestrator, store: Store, metrics: OrchestratorMetrics
) -> list[Duty]:
    """The supervised loops beside the API, the leader's alone: automatic upgrades, event delivery and the
    gallery's copies to hosts (cancelled on shutdown, or when the lease is lost)."""
    auto = AutoUpgrader(orchestrator, settings.auto_upgrade)
    deliverer = WebhookDeliverer(
        store, orchestrator.outbox.changes, settings=settings.events, registry=metrics.registry
    )
    return [
        ("automatic upgrades", auto.run),
        ("event delivery", deliverer.run),
        ("gallery replication", orchestrator.replicator.run),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overhaul serve",
        description="Run the orchestrator: the REST API, automatic upgrades and every rolling upgrade. Settings come "
        "from defaults, then --config FILE.json, then OVERHAUL_* environment variables, then these flags.",
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"overhaul serve: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                log.warning("second signal: exiting now")
                os._exit(1)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await serve(settings, stop)
        except TimeoutError:
            log.error("the graceful stop took longer than %gs: exiting", settings.shutdown_timeout)  # noqa: TRY400
            return 1
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

    return asyncio.run(run())


__all__ = ["ServeSettings", "build_parser", "main", "serve"]
