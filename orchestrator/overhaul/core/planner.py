"""Pure planning: which instances need the target, in what order, in batches of what size."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from overhaul.core.model import RollingUpgradePolicy


class Health(StrEnum):
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    UNKNOWN = "Unknown"
    INITIALIZING = "Initializing"


@dataclass(frozen=True)
class InstanceView:
    """What is observed of one instance: the version it runs, its health and its custom metrics.

    ``final``: the health source has committed a verdict that cannot turn Healthy by itself (the agent's
    Unhealthy or Unknown after its grace period, an instance that exited, a probe failing after its grace);
    an upgrade need not wait for its health timeout. ``detail`` says why, in the source's words."""

    instance_id: int
    version: str | None
    health: Health
    phase: int | None = None
    skip_upgrade: bool = False
    observed_at: float = 0.0
    final: bool = False
    detail: str = ""
    # osRollingUpgradeDeferral: the version whose pending OS upgrade the instance's application approved.
    approved: str | None = None
    # The model digest its OS disk was made with (None: not known).
    model_digest: str | None = None

    def on(self, target: str, target_model_digest: str | None) -> bool:
        """Runs the target version (and the target model, when there is one)."""
        return self.version == target and (target_model_digest is None or self.model_digest == target_model_digest)

    @property
    def healthy(self) -> bool:
        return self.health is Health.HEALTHY


def batch_size(capacity: int, max_batch_instance_percent: int) -> int:
    """Azure: max(1, floor(capacity x maxBatchInstancePercent / 100))."""
    return max(1, capacity * max_batch_instance_percent // 100)


def exceeds(count: int, total: int, percent: int) -> bool:
    """True when count is *more than* percent of total (integer arithmetic: no rounding surprises)."""
    return total > 0 and count * 100 > total * percent


def unhealthy_count(views: Iterable[InstanceView]) -> int:
    return sum(1 for v in views if not v.healthy)


def needs_upgrade(view: InstanceView, target: str, target_model_digest: str | None = None) -> bool:
    """Rule 1: instances on the target (version, and model for a model upgrade), or asking to be skipped, are left
    alone."""
    return not view.on(target, target_model_digest) and not view.skip_upgrade


def order(views: Iterable[InstanceView], prioritize_unhealthy: bool) -> list[InstanceView]:
    """PhaseOrderingNumber ascending (none is the last phase), unhealthy first if asked, then id."""

    def key(v: InstanceView) -> tuple[bool, int, bool, int]:
        return (
            v.phase is None,
            v.phase if v.phase is not None else 0,
            v.healthy if prioritize_unhealthy else False,
            v.instance_id,
        )

    return sorted(views, key=key)


def plan_batches(
    views: Sequence[InstanceView],
    target: str,
    policy: RollingUpgradePolicy,
    capacity: int,
    exclude: Collection[int] = (),
    *,
    target_model_digest: str | None = None,
    scope: Collection[int] | None = None,
) -> list[tuple[int, ...]]:
    """All batches still to run; a batch never mixes phases (a phase finishes before the next starts). ``scope``:
    only these instances (a manual upgrade of chosen ones)."""
    size = batch_size(capacity, policy.max_batch_instance_percent)
    todo = order(
        (
            v
            for v in views
            if needs_upgrade(v, target, target_model_digest)
            and v.instance_id not in exclude
            and (scope is None or v.instance_id in scope)
        ),
        policy.prioritize_unhealthy_instances,
    )
    batches: list[tuple[int, ...]] = []
    current: list[int] = []
    current_phase: int | None = None
    for view in todo:
        if current and (len(current) == size or view.phase != current_phase):
            batches.append(tuple(current))
            current = []
        current_phase = view.phase
        current.append(view.instance_id)
    if current:
        batches.append(tuple(current))
    return batches
