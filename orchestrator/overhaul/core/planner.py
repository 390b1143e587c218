"""Pure planning: which instances need the target, in what order, in batches of what size."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
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
    # The availability zone of its host (None: a scale set without zones).
    zone: str | None = None
    # Its host does not answer: nothing is known of it now (Unknown), and it counts neither as healthy nor as not.
    unreachable: bool = False

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
    """Instances known to be unhealthy: one whose host does not answer is not known to be either."""
    return sum(1 for v in views if not v.healthy and not v.unreachable)


def needs_upgrade(view: InstanceView, target: str, target_model_digest: str | None = None) -> bool:
    """Rule 1: instances on the target (version, and model for a model upgrade), or asking to be skipped, are left
    alone."""
    return not view.on(target, target_model_digest) and not view.skip_upgrade


def order(
    views: Iterable[InstanceView], prioritize_unhealthy: bool, *, zone_by_zone: bool = False
) -> list[InstanceView]:
    """PhaseOrderingNumber ascending (none is the last phase), then zone by zone if asked, unhealthy first if asked,
    then id."""

    def key(v: InstanceView) -> tuple[bool, int, str, bool, int]:
        return (
            v.phase is None,
            v.phase if v.phase is not None else 0,
            (v.zone or "") if zone_by_zone else "",
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
    cross_zone: bool = False,
) -> list[tuple[int, ...]]:
    """All batches still to run; a batch never mixes phases (a phase finishes before the next starts), nor zones
    unless ``cross_zone`` (enableCrossZoneUpgrade: the zones go one after another). ``scope``: only these instances
    (a manual upgrade of chosen ones)."""
    size = batch_size(capacity, policy.max_batch_instance_percent)
    todo = order(
        (
            v
            for v in views
            if needs_upgrade(v, target, target_model_digest)
            and not v.unreachable  # later, when its host answers again
            and v.instance_id not in exclude
            and (scope is None or v.instance_id in scope)
        ),
        policy.prioritize_unhealthy_instances,
        zone_by_zone=not cross_zone,
    )
    batches: list[tuple[int, ...]] = []
    current: list[int] = []
    current_phase: int | None = None
    current_zone: str | None = None
    for view in todo:
        if current and (
            len(current) == size or view.phase != current_phase or (not cross_zone and view.zone != current_zone)
        ):
            batches.append(tuple(current))
            current = []
        current_phase, current_zone = view.phase, view.zone
        current.append(view.instance_id)
    if current:
        batches.append(tuple(current))
    return batches


# --- placement ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A host instances can be placed on: its zone (its group's), its fault domain, and how many more instances
    it can take (the host ports left in its range; None: no limit)."""

    host: str
    zone: str | None
    fault_domain: int
    room: int | None = None
    group: str = ""  # fault domains are numbered per host group

    @property
    def domain(self) -> tuple[str, int]:
        return self.group, self.fault_domain


class PlacementError(ValueError):
    """No host can take an instance; ``field`` is the part of the model that asks for the impossible."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def place(
    new: Sequence[int],
    placed: Mapping[int, str],
    slots: Sequence[Slot],
    zones: Sequence[str] = (),
    *,
    zone_balance: bool = False,
) -> dict[int, str]:
    """Hosts for the ``new`` instances, each in turn: the scale set's zone with the fewest instances (with
    ``zone_balance`` that zone or none: zones stay within one instance of each other), then that zone's fault domain
    with the fewest, then its host with the fewest, ties by name. Instances already ``placed`` stay where they are
    (their data disks live there); a scale set without ``zones`` spreads over the fault domains of every slot."""
    by_host = {s.host: s for s in slots}
    count = Counter(placed.values())
    room = {s.host: s.room for s in slots}
    chosen: dict[int, str] = {}

    def zone_count(zone: str | None) -> int:
        return sum(n for host, n in count.items() if host in by_host and by_host[host].zone == zone)

    for instance_id in new:
        open_slots = [s for s in slots if room[s.host] != 0]
        if zones:
            wanted = sorted(zones, key=lambda z: (zone_count(z), z))
            if zone_balance:
                wanted = wanted[:1]
            open_slots = next(
                ([s for s in open_slots if s.zone == z] for z in wanted if any(s.zone == z for s in open_slots)), []
            )
            if not open_slots:
                where = (
                    f"zone {wanted[0]} (zoneBalance keeps the zones within one instance of each other)"
                    if zone_balance
                    else f"zones {', '.join(zones)}"
                )
                raise PlacementError("zones", f"no host in {where} has room for instance {instance_id}")
        if not open_slots:
            raise PlacementError("sku.capacity", f"no host has room for instance {instance_id}")
        zone = open_slots[0].zone
        domains: Counter[tuple[str, int]] = Counter()
        for host, n in count.items():
            if host in by_host and (not zones or by_host[host].zone == zone):
                domains[by_host[host].domain] += n
        best = min(open_slots, key=lambda s: (domains[s.domain], count[s.host], s.host))
        chosen[instance_id] = best.host
        count[best.host] += 1
        left = room[best.host]
        if left is not None:
            room[best.host] = left - 1
    return chosen
