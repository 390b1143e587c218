"""The "why" of a scale set's rollout, gathered from the store, the engine, the health watch and the steps being
retried, and decided in the core (core/why.py)."""

from __future__ import annotations

import asyncio

from overhaul.core.errors import OverhaulError
from overhaul.core.gallery import semver_key
from overhaul.core.lifecycle_hooks import EventState, HookEvent, HookType
from overhaul.core.model import ScaleSet
from overhaul.core.rollout import Attempt
from overhaul.core.why import Cause, Context, Gallery, attempt_causes, scale_set_causes
from overhaul.ports.driver import DriverError, InstanceState
from overhaul.runtime.maintenance import window_of
from overhaul.runtime.parts import Parts
from overhaul.runtime.views import instance_views


async def why(parts: Parts, model: ScaleSet, latest: Attempt | None) -> list[Cause]:
    """Why the rollout of ``model`` waits (its attempt in flight), or why none moves it on."""
    target = f"--resource-group {model.resource_group} --name {model.name}"
    retrying = {i: r for (name, i), r in parts.reconciler.steps.retrying.items() if name == model.name}
    automatic = await _automatic_target(parts, model) if latest is not None and not latest.status.terminal else None
    context = Context(target, retrying, parts.supervisor.stopped.get(model.name.lower()), automatic)
    if latest is not None and not latest.status.terminal:
        # The attempt lists the engine at least every observe_every: its listing serves (a follower polls often).
        recent = parts.reconciler.observed(model.name, parts.settings.observe_every)
        states, engine_error = (recent, None) if recent is not None else await _observe(parts, model)
        views = instance_views(model, states, parts.health, parts.clock())
        causes = attempt_causes(latest, views, parts.clock(), context)
        return causes if engine_error is None else [*scale_set_causes(Gallery(False), context, engine_error), *causes]
    states, engine_error = await _observe(parts, model)
    causes = scale_set_causes(await _gallery(parts, model, states), context, engine_error)
    if latest is not None:
        causes += attempt_causes(latest, {}, parts.clock(), context)
    return causes


async def _automatic_target(parts: Parts, model: ScaleSet) -> str | None:
    """The version an automatic OS upgrade would move the scale set to now (None: it has none)."""
    if not model.upgrade_policy.automatic.enable_automatic_os_upgrade or not model.image_reference.is_latest:
        return None
    try:
        return (await parts.instances.resolve(model)).version
    except OverhaulError:
        return None


async def _observe(parts: Parts, model: ScaleSet) -> tuple[dict[int, InstanceState], str | None]:
    try:
        async with asyncio.timeout(parts.settings.action_timeout):
            return await parts.driver.observe(model.name), None
    except (DriverError, TimeoutError) as exc:
        return {}, str(exc) or "no answer"


async def _window_opens(parts: Parts, model: ScaleSet, states: dict[int, InstanceState], target: str) -> float | None:
    """When a wanted automatic OS upgrade to ``target`` waits for a closed maintenance window, when it opens."""
    if not model.upgrade_policy.automatic.enable_automatic_os_upgrade:
        return None
    if all(s.version == target for s in states.values()):
        return None
    window = await window_of(parts, model.name)
    now = parts.clock()
    if window is None or window.is_open(now):
        return None
    occurrence = window.around(now)
    return occurrence[0] if occurrence else None


async def _scheduling_waits(parts: Parts, model: ScaleSet) -> HookEvent | None:
    now = parts.clock()
    for event in await parts.store.hook_events(model.name):
        if event.type is HookType.SCHEDULING and event.settled(now).state is EventState.ACTIVE:
            return event
    return None


async def _gallery(parts: Parts, model: ScaleSet, states: dict[int, InstanceState]) -> Gallery:
    ref = model.image_reference
    versions = await parts.store.image_versions()
    try:
        resolved = await parts.instances.resolve(model)
    except OverhaulError:
        resolved = None
    mine = [v for v in versions if resolved is None or (v.gallery, v.image) == (resolved.gallery, resolved.image)]
    newest = max(mine, key=lambda v: semver_key(v.version), default=None)
    present: bool | None = None
    if resolved is not None:
        try:
            async with asyncio.timeout(parts.settings.action_timeout):
                present = await parts.driver.image_present(resolved.source_for(model.is_vm), vm=model.is_vm)
        except (DriverError, TimeoutError):
            present = None
    return Gallery(
        follows_latest=ref.is_latest,
        newest=newest.version if newest else None,
        newest_quarantine=newest.quarantine if newest else None,
        resolved=resolved.version if resolved else None,
        resolved_image=resolved.source_for(model.is_vm) if resolved else None,
        image_present=present,
        window_opens=await _window_opens(parts, model, states, resolved.version) if resolved else None,
        hook_waiting=await _scheduling_waits(parts, model),
        gallery_args=f"--resource-group {model.resource_group} --gallery-name {resolved.gallery} "
        f"--gallery-image-definition {resolved.image}"
        if resolved
        else "",
    )
