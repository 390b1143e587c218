"""overhaul_* Prometheus metrics of the orchestrator, in base units."""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from overhaul.core.errors import OverhaulError
from overhaul.core.model import HealthSourceKind, ScaleSet
from overhaul.core.planner import Health
from overhaul.core.rollout import ActionKind, Attempt
from overhaul.ports.events import ActionFinished, AttemptEnded, AutoUpgradesChecked, Event, TransientError
from overhaul.runtime.orchestrator import Orchestrator

REIMAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


# One scrape waits this long for the engine's list of a scale set's instances (for their versions), then reports
# what it knows without them.
ENGINE_WAIT = 2.0
# The engine is listed for the versions at most this often (a scrape every 15 s would list thousands of instances
# on every host each time), sooner when a step of the orchestrator's or a change may have moved one.
VERSIONS_EVERY = 60.0


@dataclass
class _ScaleSetState:
    model: ScaleSet
    attempt: Attempt | None
    versions: dict[int, str]  # instance id -> version, as the engine last listed it


class _StateCollector(Collector):
    """Gauges of the orchestrator's state, read at each scrape: ``refresh`` reads the store and the engine (both
    async, the engine within ENGINE_WAIT), ``collect`` reports what was read."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self.state: list[_ScaleSetState] = []
        self.engine_up = True
        # Per scale set (lower case): when the engine was listed, as of which change and step, and what it said.
        self._listed: dict[str, tuple[float, tuple[int, int], dict[int, str]]] = {}
        self.steps = 0  # the orchestrator's engine steps seen (each may change a version)

    async def refresh(self) -> None:
        state: list[_ScaleSetState] = []
        self.engine_up = await self.orchestrator.engine_problem(ENGINE_WAIT) is None
        models = await self.orchestrator.scale_sets.list()
        for model in models:
            latest = await self.orchestrator.upgrades.latest(model.ref)
            versions = await self._versions(model) if self.engine_up else {}
            state.append(_ScaleSetState(model, latest.attempt if latest else None, versions))
        self.state = state
        names = {m.name.lower() for m in models}
        self._listed = {name: listed for name, listed in self._listed.items() if name in names}

    async def _versions(self, model: ScaleSet) -> dict[int, str]:
        """Each instance's version as the engine last listed it, listed again when it may have changed."""
        now, as_of = time.monotonic(), (self.orchestrator.changes.version, self.steps)
        listed = self._listed.get(model.name.lower())
        if listed is not None and listed[1] == as_of and now - listed[0] < VERSIONS_EVERY:
            return listed[2]
        try:
            async with asyncio.timeout(ENGINE_WAIT):
                infos = await self.orchestrator.scale_sets.instances(model.ref)
        except (OverhaulError, TimeoutError):
            return {}
        versions = {i.instance_id: i.view.version for i in infos if i.view.version}
        self._listed[model.name.lower()] = (now, as_of, versions)
        return versions

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        capacity = GaugeMetricFamily(
            "overhaul_scale_set_capacity", "Instances a scale set should have.", labels=["scale_set"]
        )
        health = GaugeMetricFamily(
            "overhaul_instances",
            "Instances by image version and last known health (Unmonitored: power state only).",
            labels=["scale_set", "version", "health"],
        )
        max_unhealthy = GaugeMetricFamily(
            "overhaul_scale_set_max_unhealthy_instance_percent",
            "The scale set's rollingUpgradePolicy.maxUnhealthyInstancePercent.",
            labels=["scale_set"],
        )
        running = GaugeMetricFamily(
            "overhaul_rolling_upgrade_running", "1 while a rolling upgrade of the scale set runs.", labels=["scale_set"]
        )
        progress = GaugeMetricFamily(
            "overhaul_rolling_upgrade_instances",
            "Instances of the latest rolling upgrade by progress.",
            labels=["scale_set", "progress"],
        )
        for item in self.state:
            model, attempt = item.model, item.attempt
            capacity.add_metric([model.name], model.capacity)
            max_unhealthy.add_metric([model.name], model.upgrade_policy.rolling.max_unhealthy_instance_percent)
            for (version, state), count in self._health(model, item.versions).items():
                health.add_metric([model.name, version, state], count)
            running.add_metric([model.name], 1 if attempt and not attempt.status.terminal else 0)
            if attempt is not None:
                for name, value in (
                    ("successful", attempt.successful),
                    ("failed", attempt.failed),
                    ("in_progress", attempt.in_progress),
                    ("pending", attempt.pending),
                ):
                    progress.add_metric([model.name, name], value)
        errors = CounterMetricFamily(
            "overhaul_health_watch_errors",
            "Failed requests to instance agents (each counts as Unknown), not counting a reimage's expected outage.",
        )
        errors.add_metric([], self.orchestrator.watch_errors)
        engine = GaugeMetricFamily("overhaul_engine_up", "1 while the container engine answers.")
        engine.add_metric([], 1 if self.engine_up else 0)
        hosts = GaugeMetricFamily(
            "overhaul_host_up", "1 while a host's engine answered when last asked (by id).", labels=["host"]
        )
        for host, status in self.orchestrator.host_groups.last_known().items():
            hosts.add_metric([host], 1 if status.up else 0)
        yield from (capacity, max_unhealthy, health, running, progress, errors, engine, hosts)

    def _health(self, model: ScaleSet, versions: dict[int, str]) -> Tally[tuple[str, str]]:
        watched = model.health_source is not HealthSourceKind.POWER
        counts: Tally[tuple[str, str]] = Tally()
        for instance_id in range(model.capacity):
            report = self.orchestrator.scale_sets.health_report(model.name, instance_id)
            known = report.health.value if report else Health.UNKNOWN.value
            state = known if watched else "Unmonitored"
            counts[(versions.get(instance_id, "unknown"), state)] += 1
        return counts


class _Takeovers(Collector):
    def __init__(self, takeovers: Callable[[], int]) -> None:
        self.takeovers = takeovers

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "overhaul_lease_takeovers", "Leases this orchestrator took from another holder.", value=self.takeovers()
        )


class OrchestratorMetrics:
    def __init__(self, orchestrator: Orchestrator) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.state = _StateCollector(orchestrator)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR, self.state):
            self.registry.register(collector)
        r = self.registry
        self.attempts = Counter(
            "overhaul_rolling_upgrades", "Rolling upgrades ended, by final status.", ["scale_set", "status"], registry=r
        )
        self.reimage_duration = Histogram(
            "overhaul_reimage_duration_seconds",
            "Time one instance's reimage took in the engine.",
            ["scale_set"],
            buckets=REIMAGE_BUCKETS,
            registry=r,
        )
        self.rollbacks = Counter(
            "overhaul_rollbacks",
            "Instances restored to their previous OS disk, by result.",
            ["scale_set", "result"],
            registry=r,
        )
        self.changes = Gauge(
            "overhaul_changes",
            "Changes so far to what automatic upgrades depend on (publishes, model updates, attempts' ends).",
            registry=r,
        )
        self.changes.set_function(lambda: orchestrator.changes.version)
        self.auto_upgrades_checked = Gauge(
            "overhaul_auto_upgrades_checked_change",
            "The change the automatic-upgrade watcher last looked at every scale set as of (it keeps up when this "
            "equals overhaul_changes).",
            registry=r,
        )
        self.engine_retries = Counter(
            "overhaul_engine_transient_errors",
            "Engine calls that failed transiently (engine unreachable or restarting) and were retried.",
            ["scale_set"],
            registry=r,
        )
        orchestrator.events.subscribe(self.on_event)

    def watch_leadership(
        self, leader: Callable[[], bool], token: Callable[[], int | None], takeovers: Callable[[], int]
    ) -> None:
        """Gauges of a replica sharing its store: whether it leads, under which lease token, how often it took the
        lease from another."""
        r = self.registry
        Gauge("overhaul_leader", "1 while this orchestrator leads the fleet (0: a standby).", registry=r).set_function(
            lambda: float(leader())
        )
        Gauge(
            "overhaul_lease_token", "The lease's fencing token this orchestrator acts under (0: none).", registry=r
        ).set_function(lambda: float((token() or 0) if leader() else 0))
        r.register(_Takeovers(takeovers))

    def on_event(self, event: Event) -> None:
        if isinstance(event, AttemptEnded):
            self.attempts.labels(event.attempt.scale_set, event.attempt.status.value).inc()
        elif isinstance(event, ActionFinished):
            self.state.steps += 1
            result = event.result
            if result.action.kind is ActionKind.REIMAGE and result.ok:
                self.reimage_duration.labels(event.scale_set).observe(result.duration)
            elif result.action.kind is ActionKind.ROLLBACK:
                self.rollbacks.labels(event.scale_set, "succeeded" if result.ok else "failed").inc()
        elif isinstance(event, TransientError):
            self.engine_retries.labels(event.scale_set).inc()
        elif isinstance(event, AutoUpgradesChecked):
            self.auto_upgrades_checked.set(event.seen)

    async def render(self) -> bytes:
        await self.state.refresh()
        return generate_latest(self.registry)
