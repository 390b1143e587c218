"""The agent's live health: probe state machine, extensions, the served verdict and its version (ETag)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from overhaul_agent import __version__
from overhaul_agent.extension_plan import ExtensionStatus
from overhaul_agent.health_state import ProbeMachine
from overhaul_agent.metadata import InstanceMetadata
from overhaul_agent.probe_body import CustomMetrics, HealthState, ProbeResult
from overhaul_agent.resources import ResourceSnapshot
from overhaul_agent.settings import ProbeSettings
from overhaul_agent.verdict import combine

log = logging.getLogger(__name__)

VerdictListener = Callable[["HealthBoard"], None]


class HealthBoard:
    """Holds what the agent knows and tells listeners when the verdict changes.

    The verdict's version increases only when what a watcher acts on changes (state, reason, customMetrics,
    extensions), never on a probe that confirms the same state: watchers cost one wake-up per change.
    """

    def __init__(
        self,
        metadata: InstanceMetadata,
        settings: ProbeSettings | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        resources: ResourceSnapshot | None = None,
    ) -> None:
        self.metadata = metadata
        self.settings = settings
        self._monotonic = monotonic
        self._wall = wall
        self._resources = resources or ResourceSnapshot()
        self.machine: ProbeMachine | None = None
        self.extensions: dict[str, ExtensionStatus] = {}
        self.last_probe: ProbeResult | None = None
        self.custom_metrics: CustomMetrics | None = None
        self.custom_metrics_error: str | None = None
        self.verdict = combine(None, [])
        self.since = wall()
        self.version = 1
        # ETags name this agent process too: a restarted or reimaged agent never matches a stale ETag.
        self.epoch = secrets.token_hex(4)
        # The pending OS upgrade (its version) the application approved (osRollingUpgradeDeferral).
        self.approved_os_upgrade: str | None = None
        self._key = self._verdict_key()
        self._changed = asyncio.Event()
        self._closed = False
        self._listeners: list[VerdictListener] = []
        self._body: bytes | None = None
        self._body_at = 0.0
        self._grace_timer: asyncio.TimerHandle | None = None

    # --- inputs ---------------------------------------------------------------------------------------------

    def start_probing(self) -> None:
        """Starts the grace period (after the extensions are done, so their work does not eat it)."""
        if self.settings is None or self.machine is not None:
            return
        s = self.settings
        fallback = HealthState.UNHEALTHY if s.fallback_is_unhealthy else HealthState.UNKNOWN
        self.machine = ProbeMachine.start(
            number_of_probes=s.number_of_probes,
            grace_period=s.grace_period,
            fallback=fallback,
            now=self._monotonic(),
        )
        self._grace_timer = asyncio.get_running_loop().call_later(s.grace_period, self.tick)
        self._update()

    def tick(self) -> None:
        if self.machine is not None:
            self.machine = self.machine.tick(self._monotonic())
            self._update()

    def record_probe(self, result: ProbeResult) -> None:
        self.last_probe = result
        # The latest probe's only: metrics the application stopped sending (SkipUpgrade) must not stick.
        self.custom_metrics = result.custom_metrics
        self.custom_metrics_error = result.custom_metrics_error
        if self.machine is not None:
            self.machine = self.machine.observe(result.state, self._monotonic(), result.detail)
        self._body = None
        self._update()

    def set_extension(self, status: ExtensionStatus) -> None:
        self.extensions[status.name] = status
        self._update()

    def approve_os_upgrade(self, version: str) -> None:
        """The application approved the pending OS upgrade to ``version``: watchers hear it at once."""
        log.info("the pending OS upgrade to %s was approved", version)
        self.approved_os_upgrade = version
        self._update()

    def add_listener(self, listener: VerdictListener) -> None:
        self._listeners.append(listener)

    def close(self) -> None:
        """Shutdown: wake every blocking query so it answers now."""
        self._closed = True
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        self._changed.set()

    # --- derived --------------------------------------------------------------------------------------------

    @property
    def state(self) -> HealthState:
        return self.verdict.state

    @property
    def closing(self) -> bool:
        return self._closed

    @property
    def etag(self) -> str:
        return f'"{self.epoch}.{self.version}"'

    def _verdict_key(self) -> tuple[Any, ...]:
        metrics = self.custom_metrics.to_json() if self.custom_metrics else None
        exts = tuple((e.name, e.state) for e in self.extensions.values())
        return (
            self.verdict,
            json.dumps(metrics, sort_keys=True),
            self.custom_metrics_error,
            exts,
            self.approved_os_upgrade,
        )

    def _update(self) -> None:
        verdict = combine(self.machine, list(self.extensions.values()))
        state_changed = verdict.state is not self.verdict.state
        if state_changed:
            level = logging.WARNING if verdict.state in (HealthState.UNHEALTHY, HealthState.UNKNOWN) else logging.INFO
            log.log(
                level,
                "health: %s -> %s: %s",
                self.verdict.state.value,
                verdict.state.value,
                verdict.reason,
                extra={"fields": {"from": self.verdict.state.value, "to": verdict.state.value}},
            )
        self.verdict = verdict
        key = self._verdict_key()
        if key == self._key:
            return
        self._key = key
        self.version += 1
        if state_changed:
            self.since = self._wall()
        self._body = None
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in self._listeners:
            listener(self)

    async def wait_for_change(self, seen_etag: str, timeout: float, release: asyncio.Event | None = None) -> None:
        """Return when the ETag differs from ``seen_etag``, the timeout passes, ``release`` is set (the server
        makes room for other queries), or on shutdown."""
        if seen_etag != self.etag or self._closed or timeout <= 0 or (release is not None and release.is_set()):
            return
        waits = [asyncio.ensure_future(self._changed.wait())]
        if release is not None:
            waits.append(asyncio.ensure_future(release.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def to_json(self) -> dict[str, Any]:
        return {
            "applicationHealthState": self.verdict.state.value,
            "since": self.since,
            "reason": self.verdict.reason,
            "version": self.version,
            "lastProbe": self.last_probe.to_json() if self.last_probe else None,
            "customMetrics": self.custom_metrics.to_json() if self.custom_metrics else None,
            "customMetricsError": self.custom_metrics_error,
            "extensions": [e.to_json() for e in self.extensions.values()],
            "probe": self.settings.to_json() if self.settings else None,
            "imageReference": dict(self.metadata.image_reference),
            "instanceId": self.metadata.instance_id,
            "scaleSet": self.metadata.scale_set,
            "agentVersion": __version__,
            "approvedOSUpgrade": self.approved_os_upgrade,
            "resources": self._resources.get(self._monotonic()),
        }

    def body(self) -> bytes:
        """The /health body, rebuilt only when something changed or the resource snapshot aged."""
        now = self._monotonic()
        if self._body is None or now - self._body_at >= self._resources.max_age:
            self._body = json.dumps(self.to_json()).encode()
            self._body_at = now
        return self._body
