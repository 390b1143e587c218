"""The pure rules behind the runtime's commands: which policy an attempt follows, which instances a request may
name, and which image version each instance of a scale set runs after a PUT."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

from overhaul.core.errors import InvalidInput
from overhaul.core.model import RollingUpgradePolicy, ScaleSet
from overhaul.core.rollout import StartedBy

V = TypeVar("V")


def check_instance_ids(model: ScaleSet, instance_ids: Iterable[int]) -> None:
    """Every id names an instance of the model (400 naming ``instanceIds`` otherwise)."""
    unknown = [i for i in instance_ids if not 0 <= i < model.capacity]
    if unknown:
        raise InvalidInput(
            f"instanceIds: no instance {unknown[0]} in {model.name} (0..{model.capacity - 1})", target="instanceIds"
        )


def attempt_policy(model: ScaleSet, started_by: StartedBy) -> RollingUpgradePolicy:
    """Azure: automatic OS upgrades use the scale set's rolling upgrade policy only with useRollingUpgradePolicy;
    otherwise the default policy (overhaul's own health deadline is kept either way)."""
    rolling = model.upgrade_policy.rolling
    if started_by is StartedBy.PLATFORM and not model.upgrade_policy.automatic.use_rolling_upgrade_policy:
        return RollingUpgradePolicy(instance_health_timeout=rolling.instance_health_timeout)
    return rolling


def model_upgrade_policy(model: ScaleSet) -> RollingUpgradePolicy:
    """Azure's upgradePolicy.mode for a model change: Rolling goes in the policy's health-gated batches; Automatic
    (and a manual upgrade in Manual mode) moves every instance at once, with no unhealthy limit."""
    rolling = model.upgrade_policy.rolling
    if model.upgrade_policy.mode == "Rolling":
        return rolling
    return RollingUpgradePolicy(
        max_batch_instance_percent=100,
        max_unhealthy_instance_percent=100,
        max_unhealthy_upgraded_instance_percent=100,
        instance_health_timeout=rolling.instance_health_timeout,
    )


def model_upgrade_version(running: Mapping[int, str | None], scope: Iterable[int] | None) -> str | None:
    """The OS image version a model upgrade keeps: the one every instance in ``scope`` (all for None) runs; None
    (the model's image) when they run different ones or none."""
    chosen = None if scope is None else set(scope)
    versions = {v for i, v in running.items() if v and (chosen is None or i in chosen)}
    return versions.pop() if len(versions) == 1 else None


def versions_after_put(capacity: int, running: Mapping[int, str | None], known: Mapping[str, V], image: V) -> list[V]:
    """What each instance 0..capacity-1 runs after a PUT: an existing instance keeps its version (when the gallery
    still knows it); a new one, or one on a version the gallery no longer has, gets the model's image."""
    kept: list[V] = []
    for instance_id in range(capacity):
        version = running.get(instance_id)
        kept.append(known.get(version, image) if version else image)
    return kept
