"""overhaul_* Prometheus metrics of the orchestrator, in base units."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from orchestrator.model import ScaleSet
from orchestrator.planner import Health
from orchestrator.rollout import ActionKind, ActionResult, Attempt
from orchestrator.service import Orchestrator

REIMAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _StateCollector(Collector):
    """Gauges read from the orchestrator's state at scrape time (no engine calls)."""

    def __init__(self, service: Orchestrator) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        capacity = GaugeMetricFamily(
            "overhaul_scale_set_capacity", "Instances a scale set should have.", labels=["scale_set"]
        )
        health = GaugeMetricFamily(
            "overhaul_instances",
            "Instances by their last known health (Unmonitored: power state only).",
            labels=["scale_set", "health"],
        )
        running = GaugeMetricFamily(
            "overhaul_rolling_upgrade_running", "1 while a rolling upgrade of the scale set runs.", labels=["scale_set"]
        )
        progress = GaugeMetricFamily(
            "overhaul_rolling_upgrade_instances",
            "Instances of the latest rolling upgrade by progress.",
            labels=["scale_set", "progress"],
        )
        for model in self.service.store.list_scale_sets():
            capacity.add_metric([model.name], model.capacity)
            for state, count in self._health(model).items():
                health.add_metric([model.name, state], count)
            latest = self.service.latest(model.name)
            attempt = latest.attempt if latest else None
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
            "overhaul_health_watch_errors", "Failed requests to instance agents (each counts as Unknown)."
        )
        errors.add_metric([], self.service.monitor.watch_errors)
        yield from (capacity, health, running, progress, errors)

    def _health(self, model: ScaleSet) -> Tally[str]:
        counts: Tally[str] = Tally(dict.fromkeys([h.value for h in Health], 0))
        watched = model.uses_agent or model.health_probe is not None
        for instance_id in range(model.capacity):
            report = self.service.monitor.report((model.name, instance_id))
            if not watched:
                counts["Unmonitored"] += 1
            else:
                counts[report.health.value if report else Health.UNKNOWN.value] += 1
        return counts


class OrchestratorMetrics:
    def __init__(self, service: Orchestrator) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR, _StateCollector(service)):
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
        self._counted: set[str] = set()
        service.attempt_listeners.append(self.on_attempt)
        service.reconciler.on_result = self.on_result

    def on_attempt(self, attempt: Attempt) -> None:
        if attempt.status.terminal and attempt.id not in self._counted:
            self._counted.add(attempt.id)
            self.attempts.labels(attempt.scale_set, attempt.status.value).inc()

    def on_result(self, model: ScaleSet, result: ActionResult) -> None:
        if result.action.kind is ActionKind.REIMAGE and result.ok:
            self.reimage_duration.labels(model.name).observe(result.duration)
        elif result.action.kind is ActionKind.ROLLBACK:
            self.rollbacks.labels(model.name, "succeeded" if result.ok else "failed").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
