"""overhaul_agent_* Prometheus metrics, in base units, on a registry of the agent's own."""

from __future__ import annotations

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

from overhaul_agent import __version__
from overhaul_agent.board import HealthBoard
from overhaul_agent.extension_plan import ProvisioningState
from overhaul_agent.probe_body import HealthState, ProbeResult

PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class AgentMetrics:
    def __init__(self) -> None:
        # *_created series double the output for no use here (start times are in process_start_time_seconds).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        r = self.registry
        self.info = Gauge(
            "overhaul_agent_info",
            "Agent build and instance identity (value is always 1).",
            ["version", "instance_id", "scale_set", "image_version"],
            registry=r,
        )
        self.health_state = Gauge(
            "overhaul_agent_health_state",
            "1 for the reported application health state, 0 for the others.",
            ["state"],
            registry=r,
        )
        self.state_since = Gauge(
            "overhaul_agent_health_state_since_timestamp_seconds",
            "When the reported state last changed.",
            registry=r,
        )
        self.state_changes = Counter(
            "overhaul_agent_health_state_changes_total", "Changes of the reported health state.", registry=r
        )
        self.probes = Counter(
            "overhaul_agent_probes_total", "Probes of the application by result.", ["result"], registry=r
        )
        self.probe_duration = Histogram(
            "overhaul_agent_probe_duration_seconds",
            "Time one probe of the application took.",
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self.custom_metrics_errors = Counter(
            "overhaul_agent_custom_metrics_errors_total",
            "Probe answers whose customMetrics were invalid.",
            registry=r,
        )
        self.phase = Gauge(
            "overhaul_agent_phase_ordering_number",
            "PhaseOrderingNumber from customMetrics (-1 when none).",
            registry=r,
        )
        self.skip_upgrade = Gauge(
            "overhaul_agent_skip_upgrade",
            "1 when the application asks to be skipped by rolling upgrades.",
            registry=r,
        )
        self._extension_metrics(r)
        self.phase.set(-1)
        self._last_state: HealthState | None = None

    def _extension_metrics(self, r: CollectorRegistry) -> None:
        self.extension_state = Gauge(
            "overhaul_agent_extension_state",
            "1 for each extension's current provisioning state.",
            ["extension", "state"],
            registry=r,
        )
        self.extension_duration = Gauge(
            "overhaul_agent_extension_duration_seconds",
            "How long each extension's last run took.",
            ["extension"],
            registry=r,
        )

    def bind(self, board: HealthBoard) -> None:
        image = board.metadata.image_reference.get("version", "")
        self.info.labels(__version__, board.metadata.instance_id or "", board.metadata.scale_set or "", str(image)).set(
            1
        )
        board.add_listener(self.on_verdict)
        self.on_verdict(board)

    def on_probe(self, result: ProbeResult) -> None:
        self.probes.labels(result.state.value).inc()
        self.probe_duration.observe(result.latency)
        if result.custom_metrics_error is not None:
            self.custom_metrics_errors.inc()

    def on_verdict(self, board: HealthBoard) -> None:
        for state in HealthState:
            self.health_state.labels(state.value).set(1 if board.state is state else 0)
        if self._last_state is not None and board.state is not self._last_state:
            self.state_changes.inc()
        self._last_state = board.state
        self.state_since.set(board.since)
        metrics = board.custom_metrics
        phase = metrics.phase_ordering_number if metrics else None
        self.phase.set(-1 if phase is None else phase)
        self.skip_upgrade.set(1 if metrics and metrics.skip_upgrade else 0)
        for ext in board.extensions.values():
            for provisioning in ProvisioningState:
                self.extension_state.labels(ext.name, provisioning.value).set(1 if ext.state is provisioning else 0)
            if ext.started_at is not None and ext.finished_at is not None:
                self.extension_duration.labels(ext.name).set(ext.finished_at - ext.started_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)
