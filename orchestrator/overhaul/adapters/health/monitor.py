"""Health sources: the agent watch, the load-balancer probe, and (in the reconciler) power state.

The agent watch holds a blocking query (``/health?wait=&etag=``) open on a keep-alive connection to each
instance's agent, so it costs one request per change of the verdict, not one per tick. An agent that cannot be
reached is Unknown. The load-balancer probe asks the application's port directly: HTTP 200 or a TCP connect is
Healthy, anything else Unhealthy, as Azure's load balancer judges.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from overhaul.adapters.health.longpoll import BadAnswer, CannotConnect, Disconnected, LongPollConnection
from overhaul.aio import Changes, cancel_and_wait
from overhaul.core.model import HealthProbe
from overhaul.core.naming import instance_name
from overhaul.core.planner import Health
from overhaul.ports.health import HealthReport, Key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthSettings:
    watch_wait: float = 60.0  # seconds one blocking query may be held (a frozen agent is seen after it + 10 s)
    probe_interval: float = 1.0  # load-balancer probe period
    # After a reimage the probe runs this often until the first Healthy: that answer gates the batch.
    reprobe_interval: float = 0.02
    probe_timeout: float = 2.0
    # A load-balancer probe's failures count as the instance's verdict only this long after a reimage (the
    # application needs time to start listening); before that they are Initializing.
    probe_grace_period: float = 30.0
    retry_min: float = 0.02  # back-off while an agent cannot be reached (it doubles up to retry_max)
    retry_max: float = 2.0


def unreachable(exc: BaseException, address: str, port: int) -> str:
    """Why the agent gave no answer, in a few words (a booting instance refuses connections for a while)."""
    where = f"{address}:{port}"
    if isinstance(exc, aiohttp.ClientConnectorError | CannotConnect):
        return f"agent not answering on {where} yet (cannot connect)"
    if isinstance(exc, TimeoutError):
        return f"agent on {where} gave no answer in time"
    if isinstance(exc, aiohttp.ServerDisconnectedError | Disconnected | ConnectionResetError):
        return f"agent on {where} closed the connection"
    if isinstance(exc, BadAnswer):
        return f"agent on {where} answered without valid HTTP: {exc}"[:300]
    if isinstance(exc, ValueError):
        return f"agent on {where} answered without valid JSON"
    return f"agent on {where} unreachable: {exc}"[:300]


def parse_agent_health(doc: Any) -> tuple[Health, int | None, bool, str]:
    """The agent's /health JSON to (health, PhaseOrderingNumber, SkipUpgrade, reason); total over inputs."""
    if not isinstance(doc, Mapping):
        return Health.UNKNOWN, None, False, "agent answered without a JSON object"
    try:
        health = Health(str(doc.get("applicationHealthState")))
    except ValueError:
        health = Health.UNKNOWN
    metrics = doc.get("customMetrics")
    rolling = metrics.get("rollingUpgrade") if isinstance(metrics, Mapping) else None
    phase: int | None = None
    skip = False
    if isinstance(rolling, Mapping):
        raw_phase = rolling.get("PhaseOrderingNumber")
        phase = raw_phase if isinstance(raw_phase, int) and not isinstance(raw_phase, bool) else None
        skip = rolling.get("SkipUpgrade") is True
    return health, phase, skip, str(doc.get("reason", ""))[:300]


def answers_for_another(doc: Any, key: Key) -> str | None:
    """The instance an agent's /health names when it is not ``key`` (None: it is, or it names none)."""
    if not isinstance(doc, Mapping):
        return None
    scale_set, instance_id = doc.get("scaleSet"), doc.get("instanceId")
    if not isinstance(scale_set, str) or not isinstance(instance_id, str):
        return None
    if scale_set.lower() == key[0].lower() and instance_id == str(key[1]):
        return None
    return instance_name(scale_set, int(instance_id)) if instance_id.isdigit() else f"{scale_set}/{instance_id}"


class HealthMonitor:
    """Keeps the latest report per instance and wakes waiters when one changes."""

    def __init__(self, settings: HealthSettings | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or HealthSettings()
        self.clock = clock
        self.reports: dict[Key, HealthReport] = {}
        self.watch_errors = 0
        # Instances going down on purpose ("down": before their reimage or rollback ends; "booting": after it, until
        # the new OS disk's agent answers): failed requests meanwhile are expected, not watch errors.
        self._outage: dict[Key, str] = {}
        self.changes = Changes()  # bumped on every change of a report that matters
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._targets: dict[Key, Callable[[], Any]] = {}
        self._probe_session: aiohttp.ClientSession | None = None
        self._adopted: set[Key] = set()

    def _probe_http(self) -> aiohttp.ClientSession:
        """A new connection per probe, as a load balancer's: a reimage never meets a stale pooled one."""
        if self._probe_session is None:
            self._probe_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
        return self._probe_session

    # --- reports ------------------------------------------------------------------------------------------

    def report(self, key: Key) -> HealthReport | None:
        return self.reports.get(key)

    def snapshot(self) -> dict[Key, HealthReport]:
        return {key: report for key, report in self.reports.items() if key not in self._adopted}

    def adopt(self, reports: Mapping[Key, HealthReport]) -> None:
        watched = {key for key, task in self._tasks.items() if not task.done()}
        for key in self._adopted - set(reports) - watched:
            self.reports.pop(key, None)
        for key, report in reports.items():
            if key not in watched and self.reports.get(key) != report:
                self.reports[key] = report
                self.changes.bump()
        self._adopted = set(reports) - watched

    def forget_adopted(self) -> None:
        for key in self._adopted:
            self.reports.pop(key, None)
        self._adopted = set()

    def _update(self, key: Key, report: HealthReport) -> None:
        self._adopted.discard(key)  # heard by this source itself from now on
        old = self.reports.get(key)
        self.reports[key] = report
        if old is None or old.health is not report.health:
            was = old.health.value if old is not None else "unwatched"
            why = f": {report.detail}" if report.detail else ""
            log.info("%s health: %s -> %s%s", instance_name(*key), was, report.health.value, why)
        # Reachability is news too: an instance nobody can reach may have exited, which only the engine can tell.
        if old is None or (old.health, old.phase, old.skip_upgrade, old.approved, old.reachable) != (
            report.health,
            report.phase,
            report.skip_upgrade,
            report.approved,
            report.reachable,
        ):
            self.changes.bump()

    @property
    def version(self) -> int:
        return self.changes.version

    async def wait_changed(self, seen: int, timeout: float | None) -> None:
        """Returns when a report changed since ``version`` was ``seen``, or after ``timeout``."""
        await self.changes.wait(seen, timeout)

    # --- watches ------------------------------------------------------------------------------------------

    def watch_agent(self, key: Key, address: str, port: int) -> None:
        self._start(key, lambda: self._agent_watch(key, address, port))

    def watch_probe(self, key: Key, probe: HealthProbe, address: str, port: int) -> None:
        self._start(key, lambda: self._probe_loop(key, probe, address, port))

    def _start(self, key: Key, factory: Callable[[], Any]) -> None:
        if key not in self._targets:
            self._outage[key] = "booting"  # a new instance, or the first look after a restart: it may still boot
        self._targets[key] = factory
        if key not in self._tasks or self._tasks[key].done():
            self._spawn(key, factory)

    def _spawn(self, key: Key, factory: Callable[[], Any]) -> None:
        self._tasks[key] = asyncio.get_running_loop().create_task(factory(), name=f"health-{key[0]}-{key[1]}")

    def expect_outage(self, key: Key) -> None:
        self._outage[key] = "down"

    def reset(self, key: Key) -> None:
        """After a reimage or rollback: forget what the previous OS disk said and watch the new one afresh."""
        self._outage[key] = "booting"
        self._update(key, HealthReport(Health.UNKNOWN, self.clock(), "reimaged: waiting for the new OS disk"))
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
        factory = self._targets.get(key)
        if factory is not None:
            self._spawn(key, factory)

    async def unwatch(self, key: Key) -> None:
        self._outage.pop(key, None)
        self._targets.pop(key, None)
        self.reports.pop(key, None)
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(tasks)
        if self._probe_session is not None:
            await self._probe_session.close()
        self._probe_session = None

    async def _agent_watch(self, key: Key, address: str, port: int) -> None:
        connection = LongPollConnection(address, port)
        try:
            await self._agent_answers(key, connection)
        finally:
            connection.close()

    async def _agent_answers(self, key: Key, connection: LongPollConnection) -> None:
        address, port = connection.address, connection.port
        etag: str | None = None
        delay = self.settings.retry_min
        while True:
            # Up to an eighth less, at random (as Consul's blocking queries): watches started together (a restart,
            # a scale-out of thousands) drift apart instead of all coming back in the same instant forever.
            wait = round(self.settings.watch_wait * (1 - random.random() / 8), 3)
            query = f"?wait={wait:g}&etag={quote(etag.strip(chr(34)), safe='')}" if etag else ""
            try:
                _, headers, body = await connection.get(f"/health{query}", wait + 10)
                doc = json.loads(body)
                etag = headers.get("etag")
            except (OSError, EOFError, TimeoutError, ValueError) as exc:
                if key not in self._outage:
                    self.watch_errors += 1
                etag = None
                report = HealthReport(Health.UNKNOWN, self.clock(), unreachable(exc, address, port), reachable=False)
                self._update(key, report)
                await asyncio.sleep(delay)  # back-off: a booting instance has nothing to wait on
                delay = min(delay * 2, self.settings.retry_max)
                continue
            delay = self.settings.retry_min
            if self._outage.get(key) == "booting":  # not the old OS disk's last answer: the new one is up
                del self._outage[key]
            other = answers_for_another(doc, key)
            if other is not None:
                # Another instance's agent (a port reused on another host, a stale address): not this one's word.
                self.watch_errors += 1
                detail = f"the agent at {address}:{port} answers for {other}, not {instance_name(*key)}"
                self._update(key, HealthReport(Health.UNKNOWN, self.clock(), detail))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max)
                continue
            health, phase, skip, reason = parse_agent_health(doc)
            # The agent commits Unhealthy or Unknown only after its grace period (Initializing before it).
            final = health in (Health.UNHEALTHY, Health.UNKNOWN)
            approved = doc.get("approvedOSUpgrade") if isinstance(doc, Mapping) else None
            approved = approved if isinstance(approved, str) else None
            self._update(key, HealthReport(health, self.clock(), reason, phase, skip, final, approved=approved))

    async def _probe_loop(self, key: Key, probe: HealthProbe, address: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        grace_ends = self.clock() + self.settings.probe_grace_period
        eager = True  # from a (re)start until the first Healthy
        interval = probe.interval or self.settings.probe_interval
        misses = 0  # consecutive failures since the last success (numberOfProbes of them make it Unhealthy)
        while True:
            health, detail, reachable = await self._probe_once(probe, address, port)
            now = self.clock()
            misses = 0 if health is Health.HEALTHY else misses + 1
            if health is Health.HEALTHY:
                grace_ends = now  # the application is up: from now on a failure is its verdict
            elif not eager and misses < probe.number_of_probes:
                # A Healthy instance stays so until numberOfProbes probes in a row failed, as a load balancer's.
                health, detail = Health.HEALTHY, f"{detail} ({misses} of {probe.number_of_probes} failed probes)"
            if now >= grace_ends:
                final = health is not Health.HEALTHY
                self._update(key, HealthReport(health, now, detail, final=final, reachable=reachable))
            else:
                detail = f"{detail}; grace period: {grace_ends - now:.0f}s left"
                self._update(key, HealthReport(Health.INITIALIZING, now, detail, reachable=reachable))
            eager = eager and health is not Health.HEALTHY
            next_at += min(self.settings.reprobe_interval, interval) if eager else interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))  # a fixed probe period, as a load balancer's

    async def _probe_once(self, probe: HealthProbe, address: str, port: int) -> tuple[Health, str, bool]:
        """Health, why, and whether the port answered at all."""
        timeout = self.settings.probe_timeout
        if probe.protocol == "Tcp":
            try:
                async with asyncio.timeout(timeout):
                    _, writer = await asyncio.open_connection(address, port)
                writer.close()
                return Health.HEALTHY, "TCP connect succeeded", True
            except (OSError, TimeoutError) as exc:
                return Health.UNHEALTHY, f"TCP connect failed: {exc}"[:300], False
        url = f"http://{address}:{port}{probe.request_path}"
        try:
            async with self._probe_http().get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Health.UNHEALTHY, f"probe failed: {exc}"[:300], False
        return (Health.HEALTHY if status == 200 else Health.UNHEALTHY), f"HTTP {status}", True
