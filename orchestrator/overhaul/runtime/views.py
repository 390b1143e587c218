"""What the runtime sees of a scale set: one view per instance (the engine's word and the health source's), the
states a successful driver action leaves (without asking the engine again), and the image reference history
shows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from overhaul.core.model import HealthSourceKind, ScaleSet
from overhaul.core.planner import Health, InstanceView
from overhaul.core.rollout import ActionKind, ActionResult, Attempt
from overhaul.ports.driver import InstanceState, OsDisk
from overhaul.ports.health import HealthSource


def instance_views(
    model: ScaleSet, states: Mapping[int, InstanceState], health: HealthSource, now: float
) -> dict[int, InstanceView]:
    """One view per instance id of the model: the engine's version and power state, the health source's word."""
    views: dict[int, InstanceView] = {}
    watched = model.health_source is not HealthSourceKind.POWER
    for instance_id in range(model.capacity):
        state = states.get(instance_id)
        if state is not None and state.unreachable is not None:
            views[instance_id] = InstanceView(
                instance_id, None, Health.UNKNOWN, detail=state.unreachable, zone=state.zone, unreachable=True
            )
            continue
        if state is None or not state.running:
            detail = "the instance does not exist" if state is None else "the instance is not running (it exited)"
            views[instance_id] = InstanceView(
                instance_id,
                state.version if state else None,
                Health.UNHEALTHY,
                observed_at=now,
                final=True,
                detail=detail,
                zone=state.zone if state else None,
            )
            continue
        disk_model = state.current.model_digest if state.current else None
        if not watched:
            views[instance_id] = InstanceView(
                instance_id, state.version, Health.HEALTHY, observed_at=now, model_digest=disk_model, zone=state.zone
            )
            continue
        report = health.report((model.name, instance_id))
        if report is None:
            views[instance_id] = InstanceView(
                instance_id, state.version, Health.UNKNOWN, observed_at=0.0, model_digest=disk_model, zone=state.zone
            )
            continue
        views[instance_id] = InstanceView(
            instance_id,
            state.version,
            report.health,
            report.phase,
            report.skip_upgrade,
            report.observed_at,
            report.final,
            report.detail,
            report.approved,
            disk_model,
            state.zone,
        )
    return views


def known_after(
    states: Mapping[int, InstanceState], result: ActionResult, target: str, target_model_digest: str | None = None
) -> dict[int, InstanceState]:
    """The instance states after a successful driver action, without asking the engine (pure)."""
    updated = dict(states)
    instance_id = result.action.instance_id
    state = states.get(instance_id, InstanceState(instance_id, None))
    if result.action.kind is ActionKind.REIMAGE:
        current = state.current
        already = (
            current is not None and current.version == target and target_model_digest in (None, current.model_digest)
        )
        previous = state.previous if already else current
        disk = OsDisk(target, "", True, target_model_digest)
        updated[instance_id] = InstanceState(instance_id, disk, previous, state.address, state.ports)
    elif result.action.kind is ActionKind.ROLLBACK and state.previous is not None:
        restored = OsDisk(state.previous.version, state.previous.image, True, state.previous.model_digest)
        updated[instance_id] = InstanceState(instance_id, restored, None, state.address, state.ports)
    elif result.action.kind is ActionKind.COMMIT:
        updated[instance_id] = InstanceState(instance_id, state.current, None, state.address, state.ports)
    return updated


def image_reference_for(model: ScaleSet | None, attempt: Attempt) -> dict[str, Any]:
    """The attempt's target as Azure's history shows it: the model's reference with the exact version."""
    ref = model.image_reference.to_json() if model else {}
    if "id" in ref:
        ref["id"] = ref["id"].split("/versions/")[0] + f"/versions/{attempt.target_version}"
    else:
        ref["version"] = attempt.target_version
    return ref
