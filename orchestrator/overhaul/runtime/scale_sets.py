"""Scale sets: Azure's PUT and PATCH (validated, stored, and the engine made to match), delete, reimage, and what
each instance runs and listens on."""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from overhaul.core.arm_json import ModelError, merge_patch
from overhaul.core.errors import Conflict, InvalidInput, Unavailable
from overhaul.core.gallery import ImageVersion
from overhaul.core.model import (
    ScaleSet,
    ScaleSetRef,
    check_kind_change,
    check_new_model,
    keep_secrets,
    model_digest,
    parse_scale_set,
)
from overhaul.core.planner import InstanceView
from overhaul.core.probes import resolve_probe
from overhaul.core.rollout import ActionKind
from overhaul.core.rules import check_instance_ids, versions_after_put
from overhaul.core.triage import Fault
from overhaul.ports.driver import DriverError, InstanceState
from overhaul.ports.health import HealthReport
from overhaul.runtime.instances import where_it_listens
from overhaul.runtime.outbox import subject_of
from overhaul.runtime.parts import EngineFailed, Parts, as_ref, engine_error
from overhaul.runtime.upgrades import Upgrades
from overhaul.runtime.views import instance_views

log = logging.getLogger(__name__)
IMAGE_REFERENCE = "properties.virtualMachineProfile.storageProfile.imageReference"
PORT_TRIES = 10  # host ports tried for an instance its host refuses them for, before the PUT says so


@dataclass(frozen=True)
class InstanceInfo:
    instance_id: int
    name: str
    view: InstanceView
    ports: Mapping[int, int]
    running: bool
    has_previous_os_disk: bool
    health_detail: str = ""
    address: str = "127.0.0.1"  # where its ports are published
    host: str = ""  # the id of the host it is placed on ("": the orchestrator's own engine)


class ScaleSets:
    def __init__(self, parts: Parts, upgrades: Upgrades) -> None:
        self.parts = parts
        self.upgrades = upgrades
        # Why VM scale sets are refused here (None: they are not): several orchestrators share the store.
        self.vms_refused: str | None = None
        # What refuses a change of a scale set now (a deletion running: runtime/deletions.py sets it); every PUT
        # and PATCH comes through ``put``, whoever sends it (the API, a template deployment).
        self.refuse_change: Callable[[ScaleSetRef], Awaitable[None]] | None = None

    async def find(self, ref: ScaleSetRef | str) -> ScaleSet | None:
        return await self.parts.find_scale_set(ref)

    async def get(self, ref: ScaleSetRef | str) -> ScaleSet:
        return await self.parts.scale_set(ref)

    async def list(self, subscription: str | None = None, resource_group: str | None = None) -> builtins.list[ScaleSet]:
        return [
            m
            for m in await self.parts.store.list_scale_sets()
            if (subscription is None or m.subscription.lower() == subscription.lower())
            and (resource_group is None or m.resource_group.lower() == resource_group.lower())
        ]

    async def put(self, ref: ScaleSetRef | str, body: Any, *, patch: bool = False) -> tuple[ScaleSet, bool]:
        """Azure's PUT (properties left out keep their values) or PATCH (a JSON merge patch), read and applied
        under the scale set's write lock; the engine is then made to match the capacity (new instances on the
        resolved image; removed ids deleted, their data disks kept). Returns the model and whether it was created."""
        ref = as_ref(ref)
        if self.refuse_change is not None:
            await self.refuse_change(ref)
        async with self.parts.writing(ref.name):
            current = await self.find(ref)
            if patch and current is None:
                await self.get(ref)  # NotFound
            if current is not None:
                if not isinstance(body, Mapping):
                    raise InvalidInput("the request body must be a JSON object", target="")
                previous = current.to_json()
                body = keep_secrets(previous, merge_patch(previous, body))
            model, previous_model = await self._validated(ref, body)
            if previous_model is not None and await self.parts.active(previous_model.name):
                if model.to_json() == previous_model.to_json():
                    return previous_model, False
                raise Conflict(
                    f"a rolling upgrade of {previous_model.name} is in progress: the model cannot change until it "
                    "ends (cancel it first)",
                    "RollingUpgradeInProgress",
                    details=(
                        {
                            "code": "ModelChangeRefused",
                            "message": "the model changes only between rolling upgrades; nothing was changed",
                            "unblock": "wait for the rolling upgrade to end (`overhaul vmss rolling-upgrade get-latest "
                            "--wait`), or cancel it (`overhaul vmss rolling-upgrade cancel`), then send the change "
                            "again",
                        },
                    ),
                )
            await self._apply(model, previous_model)
            return model, previous_model is None

    async def _validated(self, ref: ScaleSetRef, doc: Any) -> tuple[ScaleSet, ScaleSet | None]:
        """The model ``doc`` describes, and the one stored before it (None when this creates it)."""
        try:
            model = parse_scale_set(
                doc, name=ref.name, resource_group=ref.resource_group, subscription=ref.subscription
            )
            model = resolve_probe(model, await self.parts.store.load_balancers())
            check_new_model(model)
        except ModelError as exc:
            raise InvalidInput(str(exc), target=exc.path) from exc
        if model.is_vm and self.vms_refused:
            raise InvalidInput(self.vms_refused, target="properties.virtualMachineProfile.overhaul.vm")
        await self.parts.instances.candidates(model)  # a location, zone or host group no host serves: 400
        previous = await self.parts.store.get_scale_set(ref.name)
        if previous is None:
            return model, None
        if not ref.matches(previous):
            raise Conflict(
                f"a scale set named {previous.name} exists in resource group {previous.resource_group} "
                f"(subscription {previous.subscription}); scale set names are unique on this host because they "
                "name its instances",
                "ScaleSetNameInUse",
                "name",
            )
        try:
            check_kind_change(previous, model)
        except ModelError as exc:
            raise InvalidInput(str(exc), target=exc.path) from exc
        # The first spelling of a name stays its canonical one, as ARM keeps it.
        canonical = replace(
            model, name=previous.name, resource_group=previous.resource_group, subscription=previous.subscription
        )
        return canonical, previous

    async def _apply(self, model: ScaleSet, previous: ScaleSet | None) -> None:
        """Stores the model and makes the engine match it; a changed model starts its upgrade (Azure's
        upgradePolicy.mode: Automatic at once, Rolling in health-gated batches, Manual waits for
        `vmss update-instances`)."""
        parts = self.parts
        image = await parts.instances.resolve(model)
        placement = await parts.instances.placement(model)  # what no host can take is refused before anything is kept
        states = await parts.observe(model.name)
        known = {
            v.version: v
            for v in await parts.store.image_versions()
            if (v.gallery, v.image) == (image.gallery, image.image)
        }
        running = {i: s.version for i, s in states.items()}
        versions = versions_after_put(model.capacity, running, known, image)
        if any(i not in states for i in range(model.capacity)):
            await parts.require_image(image, IMAGE_REFERENCE, vm=model.is_vm)
        await parts.store.put_scale_set(model, parts.clock())
        await parts.instances.keep(model, placement)
        try:
            for instance_id, version in enumerate(versions):
                await self._ensure_running(model, instance_id, version)
            for instance_id in sorted(set(states) - set(range(model.capacity))):
                await parts.driver.delete(
                    await parts.instances.handle(previous or model, instance_id, states[instance_id].version)
                )
                await parts.instances.forget(model.name, instance_id)
        except DriverError as exc:
            raise engine_error(exc) from exc
        if model.is_vm:
            # A VM whose host port was taken when it booted listens on another one.
            await parts.instances.follow(model, await parts.observe(model.name), range(model.capacity))
        else:
            await parts.instances.watch(model, states)
        parts.changes.bump()
        changed = previous is not None and model_digest(model) != model_digest(previous)
        if changed and model.capacity > 0 and model.upgrade_policy.mode != "Manual":
            await self.upgrades.begin_model_upgrade(model, states, None)

    async def _ensure_running(self, model: ScaleSet, instance_id: int, version: ImageVersion) -> None:
        """The instance runs. A host port its host refuses (something else listens there: a remote host's ports
        are not checked beforehand) is replaced by another, never offered again here, as a rollout's step does."""
        parts = self.parts
        spec = await parts.instances.spec(model, instance_id, version.version, version)
        refused: set[int] = set()
        for _ in range(PORT_TRIES - 1):
            try:
                await parts.driver.ensure_running(spec)
                return
            except DriverError as exc:
                if exc.fault is not Fault.HOST_PORT_TAKEN or not spec.ports:
                    raise
                spec = await parts.instances.elsewhere(model, spec, refused)
                log.warning("%s: %s; publishing on %s instead", spec.name, exc, dict(spec.ports))
        await parts.driver.ensure_running(spec)

    async def delete(self, ref: ScaleSetRef | str) -> None:
        ref = as_ref(ref)
        parts = self.parts
        async with parts.writing(ref.name):
            model = await self.get(ref)
            await parts.settle(model.name)
            states = await parts.observe(model.name)
            # With no instance left (scaled in to 0), instance 0 still stands for the scale set: deleting it is
            # how a driver hears to remove the data disks of instances scaled in before.
            leftover: dict[int, str | None] = {i: s.version for i, s in states.items()} or {0: None}
            try:
                for instance_id, version in leftover.items():
                    await parts.driver.delete(
                        await parts.instances.handle(model, instance_id, version), keep_data=False
                    )
            except DriverError as exc:
                raise engine_error(exc) from exc
            for instance_id in set(range(model.capacity)) | set(states):
                await parts.health.unwatch((model.name, instance_id))
            await parts.store.delete_scale_set(model.name)
            # Its event subscriptions go with it, as Azure's extension resources do.
            for subscription in await parts.store.event_subscriptions():
                if subscription.scope.lower() == subject_of(model).lower():
                    await parts.store.delete_event_subscription(subscription.id)
            parts.changes.bump()

    async def repair(self, model: ScaleSet) -> dict[int, InstanceState]:
        """With no attempt running, no instance should have a previous OS disk: one left by a crash in the middle
        of a reimage is committed when the new disk runs, else restored."""
        driver, instances = self.parts.driver, self.parts.instances
        states = await driver.observe(model.name)
        for instance_id, state in states.items():
            if state.previous is None:
                continue
            spec = await instances.handle(model, instance_id, state.version)
            if state.running:
                log.info("%s: dropping a previous OS disk left by an interrupted reimage", spec.name)
                await driver.commit(spec)
            else:
                log.info("%s: restoring its previous OS disk (an interrupted reimage left none running)", spec.name)
                await driver.rollback(spec)
        return await driver.observe(model.name) if any(s.previous for s in states.values()) else states

    async def reimage(self, ref: ScaleSetRef | str, instance_ids: builtins.list[int]) -> None:
        """Azure's reimage: a fresh OS disk from the model's image for each chosen instance, at once (not
        health-gated; rolling upgrades are). Data disks and host ports are kept. The image is checked before
        any instance is touched, and an instance whose new OS disk cannot be made gets its previous one back."""
        ref = as_ref(ref)
        parts = self.parts
        async with parts.writing(ref.name):
            model = await self.get(ref)
            await parts.settle(model.name)
            check_instance_ids(model, instance_ids)
            image = await parts.instances.resolve(model)
            await parts.require_image(image, f"image version {image.version}", vm=model.is_vm)
            try:
                # Leftovers of an earlier reimage that was cut short are finished first.
                await self.repair(model)
                async with asyncio.timeout(parts.settings.action_timeout):
                    outcomes = await self._reimage_each(model, image, sorted(set(instance_ids)))
            except DriverError as exc:
                raise engine_error(exc) from exc
            except TimeoutError as exc:
                raise Unavailable(
                    "the engine did not finish the reimage in time; the next reimage or restart completes it",
                    "EngineUnavailable",
                ) from exc
            errors = [e for e in outcomes if e]
            if errors:
                raise EngineFailed("; ".join(errors))

    async def _reimage_each(
        self, model: ScaleSet, image: ImageVersion, instance_ids: Iterable[int]
    ) -> builtins.list[str | None]:
        """Each instance's new OS disk at once; what went wrong for each (None where nothing did)."""
        parts = self.parts
        disk = uuid.uuid4().hex[:8]

        async def one(instance_id: int) -> str | None:
            spec = await parts.instances.spec(model, instance_id, image.version, image)
            spec = replace(spec, os_disk=f"{image.version}+{disk}")
            failure = await parts.reconciler.steps.step(model.name, ActionKind.REIMAGE, spec)
            if model.is_vm and failure is None:
                await parts.instances.follow(model, await parts.observe(model.name), [instance_id])
            parts.health.reset((model.name, instance_id))
            if failure is not None:
                # The new OS disk could not be made: the previous one runs again.
                restored = await parts.reconciler.steps.step(model.name, ActionKind.ROLLBACK, spec)
                if restored is None:
                    return failure.error
                return f"{failure.error}; restoring the previous OS disk: {restored.error}"
            await parts.reconciler.steps.step(model.name, ActionKind.COMMIT, spec)
            return None

        return list(await asyncio.gather(*(one(i) for i in instance_ids)))

    async def instances(self, ref: ScaleSetRef | str) -> builtins.list[InstanceInfo]:
        """What each instance runs, how healthy it is, and where it listens."""
        parts = self.parts
        model = await self.get(ref)
        states = await parts.observe(model.name)
        views = instance_views(model, states, parts.health, parts.clock())
        ports = await parts.store.instance_ports(model.name)
        placed = await parts.store.instance_hosts(model.name)
        infos = []
        for i in range(model.capacity):
            report = parts.health.report((model.name, i))
            state = states.get(i)
            address, host_ports = where_it_listens(ports.get(i, {}), state)
            running, previous = bool(state and state.running), bool(state and state.previous)
            detail = views[i].detail if views[i].unreachable else report.detail if report else ""
            host = state.host if state else placed.get(i, "")
            infos.append(
                InstanceInfo(i, model.instance_name(i), views[i], host_ports, running, previous, detail, address, host)
            )
        return infos

    def health_report(self, scale_set: str, instance_id: int) -> HealthReport | None:
        return self.parts.health.report((scale_set, instance_id))
