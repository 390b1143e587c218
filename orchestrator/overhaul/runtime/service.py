"""The orchestrator's commands and queries: scale sets, the gallery, rolling upgrades, history.

The REST API and the tests use this and nothing below it. Writes to one scale set are serialised (one lock per
name); "one active attempt per scale set" is the store's compare-and-set; attempts run under the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from overhaul.core.auto_upgrade import AutoUpgradeSettings, due_upgrade
from overhaul.core.errors import Conflict, InvalidInput, NotFound, OverhaulError, Unavailable
from overhaul.core.gallery import Gallery, ImageDefinition, ImageVersion
from overhaul.core.model import (
    ModelError,
    RollingUpgradePolicy,
    ScaleSet,
    ScaleSetRef,
    check_kind_change,
    check_new_model,
    keep_secrets,
    merge_patch,
    model_digest,
    parse_scale_set,
)
from overhaul.core.naming import Scope
from overhaul.core.network import LoadBalancer
from overhaul.core.planner import InstanceView
from overhaul.core.probes import check_probe_change, probe_name, resolve_probe
from overhaul.core.rollout import ActionKind, Attempt, StartedBy, request_cancel, start
from overhaul.ports.clock import Clock
from overhaul.ports.driver import Driver, DriverError, InstanceState
from overhaul.ports.events import AttemptChanged, Event
from overhaul.ports.health import HealthReport, HealthSource
from overhaul.ports.store import Store, StoredAttempt
from overhaul.runtime.changes import Changes
from overhaul.runtime.events import EventBus
from overhaul.runtime.instances import Instances, where_it_listens
from overhaul.runtime.reconciler import Reconciler, image_reference_for, instance_views
from overhaul.runtime.settings import RuntimeSettings
from overhaul.runtime.supervisor import Supervisor

log = logging.getLogger(__name__)
DEFAULT_SUBSCRIPTION = "local"
DEFAULT_RESOURCE_GROUP = "default"


class EngineFailed(OverhaulError):
    """The engine refused a call for a reason that is not the request's (the message has the engine's words)."""

    code = "EngineError"


def engine_error(exc: DriverError) -> OverhaulError:
    if exc.transient:
        return Unavailable(f"the container engine is unavailable: {exc}", "EngineUnavailable")
    return EngineFailed(str(exc))


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


# Gallery and load balancer writes are serialised under names no scale set can have.
GALLERY_LOCK = "/galleries"
LB_LOCK = "/loadBalancers"


class Resource(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def resource_group(self) -> str: ...
    @property
    def subscription(self) -> str: ...
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=Resource)


def named(resources: Iterable[R], name: str, scope: Scope | None = None) -> R | None:
    """The one of that name (ARM compares names case-insensitively) within ``scope`` (anywhere for None: the
    Python API's shorthand; the REST API always gives the request's scope)."""
    return next((r for r in resources if r.name.lower() == name.lower() and (scope is None or scope.contains(r))), None)


def same_name(existing: R | None, wanted: R, kind: str, code: str) -> str:
    """The name ``wanted`` is stored under: the first spelling of an existing one, as ARM keeps it. Names are unique
    on the host, so one held by a resource of another group is a conflict."""
    if existing is None:
        return wanted.name
    if existing.id.lower() != wanted.id.lower():
        raise Conflict(
            f"a {kind} named {existing.name} exists in resource group {existing.resource_group}: {kind} names are "
            "unique on this host",
            code,
        )
    return existing.name


def in_scope(resources: list[R], scope: Scope | None) -> list[R]:
    """Those within ``scope`` (all of them for None)."""
    return resources if scope is None else [r for r in resources if scope.contains(r)]


def where(scope: Scope | None) -> str:
    if scope is None:
        return ""
    group = f" in resource group {scope.resource_group}" if scope.resource_group else ""
    return f"{group} of subscription {scope.subscription}"


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


def as_ref(ref: ScaleSetRef | str) -> ScaleSetRef:
    """A bare name means the default subscription and resource group (the Python API's shorthand)."""
    return ref if isinstance(ref, ScaleSetRef) else ScaleSetRef(DEFAULT_SUBSCRIPTION, DEFAULT_RESOURCE_GROUP, ref)


class Orchestrator:
    def __init__(
        self,
        store: Store,
        driver: Driver,
        health: HealthSource,
        *,
        clock: Clock = time.time,
        settings: RuntimeSettings | None = None,
    ) -> None:
        self.store = store
        self.driver = driver
        self.health = health
        self.clock = clock
        self.settings = settings or RuntimeSettings()
        self.events = EventBus()
        self.instances = Instances(store, health)
        self.reconciler = Reconciler(store, driver, health, self.instances, self.events, clock, self.settings)
        self.supervisor = Supervisor(store, self.reconciler, self.settings)
        self.changes = Changes()  # bumped when the gallery, a model or an attempt's end changes
        self._attempt_ended: dict[str, asyncio.Event] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.events.subscribe(self._on_event)

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Watches every instance, repairs what a crash left half done, and resumes every unfinished attempt."""
        active = {s.attempt.scale_set.lower() for s in await self.store.unfinished_attempts()}
        for model in await self.store.list_scale_sets():
            states: dict[int, InstanceState] | None = None
            if model.name.lower() not in active:
                try:
                    states = await self._repair(model)
                except DriverError as exc:
                    log.warning("could not check %s's instances at start: %s", model.name, exc)
            await self.instances.watch(model, states)
        await self.supervisor.start()

    async def _repair(self, model: ScaleSet) -> dict[int, InstanceState]:
        """With no attempt running, no instance should have a previous OS disk: one left by a crash in the middle
        of a reimage is committed when the new disk runs, else restored."""
        states = await self.driver.observe(model.name)
        for instance_id, state in states.items():
            if state.previous is None:
                continue
            spec = self.instances.handle(model, instance_id, state.version)
            if state.running:
                log.info("%s: dropping a previous OS disk left by an interrupted reimage", spec.name)
                await self.driver.commit(spec)
            else:
                log.info("%s: restoring its previous OS disk (an interrupted reimage left none running)", spec.name)
                await self.driver.rollback(spec)
        return await self.driver.observe(model.name) if any(s.previous for s in states.values()) else states

    async def close(self) -> None:
        await self.supervisor.close()
        await self.health.close()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, AttemptChanged) and event.attempt.done:
            self.changes.bump()
            ended = self._attempt_ended.pop(event.attempt.id, None)
            if ended is not None:
                ended.set()

    @contextlib.asynccontextmanager
    async def _writing(self, name: str) -> AsyncIterator[None]:
        """One writer per scale set name at a time (create, update, delete, reimage, start)."""
        # A lock lives as long as a writer holds or waits for it (the dictionary's references are weak).
        lock = self._locks.get(name.lower())
        if lock is None:
            lock = self._locks[name.lower()] = asyncio.Lock()
        async with lock:
            yield

    async def _observe(self, name: str) -> dict[int, InstanceState]:
        try:
            async with asyncio.timeout(self.settings.action_timeout):
                return await self.driver.observe(name)
        except DriverError as exc:
            raise engine_error(exc) from exc
        except TimeoutError as exc:
            raise Unavailable("the container engine did not answer", "EngineUnavailable") from exc

    def storage_problem(self) -> str | None:
        """None while the store takes writes, as far as it knows; else why it does not."""
        return self.store.problem()

    async def engine_problem(self, timeout: float = 5.0) -> str | None:
        """None when the engine answers now; else what is wrong."""
        try:
            async with asyncio.timeout(timeout):
                await self.driver.ping()
        except DriverError as exc:
            return str(exc)
        except TimeoutError:
            return f"the engine did not answer within {timeout:g}s"
        return None

    async def _require_image(self, version: ImageVersion, target: str, *, vm: bool = False) -> None:
        """The artefact instances are made from, present before any instance is touched."""
        image = version.artefact(vm)
        try:
            present = await self.driver.image_present(image, vm=vm)
        except DriverError as exc:
            raise engine_error(exc) from exc
        if not present:
            what = f"no VM artefacts (base.qcow2, vmlinuz, initrd.img) in {image!r}" if vm else f"no image {image!r}"
            raise InvalidInput(f"{target}: the engine has {what}", "ImageNotFound", target)

    # --- gallery ------------------------------------------------------------------------------------------

    async def put_gallery(self, gallery: Gallery) -> bool:
        """Creates or updates a gallery; True when it was created. Its name is unique on the host."""
        async with self._writing(GALLERY_LOCK):
            existing = await self._find_gallery(gallery.name)
            gallery = replace(gallery, name=same_name(existing, gallery, "gallery", "GalleryNameTaken"))
            await self.store.put_gallery(gallery)
            return existing is None

    async def _find_gallery(self, name: str, scope: Scope | None = None) -> Gallery | None:
        return named(await self.store.galleries(), name, scope)

    async def gallery(self, name: str, scope: Scope | None = None) -> Gallery:
        found = await self._find_gallery(name, scope)
        if found is None:
            raise NotFound(f"gallery {name} does not exist{where(scope)}", "GalleryNotFound")
        return found

    async def galleries(self, scope: Scope | None = None) -> list[Gallery]:
        return in_scope(await self.store.galleries(), scope)

    async def delete_gallery(self, name: str, scope: Scope | None = None) -> None:
        """As Azure: refused while it holds image definitions (delete them first)."""
        async with self._writing(GALLERY_LOCK):
            gallery = await self.gallery(name, scope)
            held = [d.name for d in await self.store.image_definitions() if d.gallery.lower() == name.lower()]
            if held:
                raise Conflict(
                    f"gallery {gallery.name} holds image definition(s) {', '.join(held)}: delete them first",
                    "CannotDeleteResource",
                )
            await self.store.delete_gallery(gallery.name)

    async def put_load_balancer(self, balancer: LoadBalancer) -> bool:
        """Creates or updates a load balancer; True when it was created. Scale sets that use one of its probes
        follow a new path, interval or count at once; a probe in use keeps its port and protocol."""
        async with self._writing(LB_LOCK):
            existing = await self._find_load_balancer(balancer.name)
            balancer = replace(balancer, name=same_name(existing, balancer, "load balancer", "LoadBalancerNameTaken"))
            users = [m for m in await self.store.list_scale_sets() if probe_name(m, balancer) is not None]
            check_probe_change(balancer, users)
            await self.store.put_load_balancer(balancer)
            for user in users:
                async with self._writing(user.name):
                    current = await self.store.get_scale_set(user.name)
                    if current is None or probe_name(current, balancer) is None:
                        continue
                    resolved = resolve_probe(current, [balancer])
                    if resolved.health_probe != current.health_probe:
                        await self.store.put_scale_set(resolved, self.clock())
                        await self._watch_afresh(resolved)
            return existing is None

    async def _watch_afresh(self, model: ScaleSet) -> None:
        """Its health source's settings changed: every instance is watched again with the new ones."""
        for instance_id in range(model.capacity):
            await self.health.unwatch((model.name, instance_id))
        await self.instances.watch(model, await self._observe(model.name))

    async def _find_load_balancer(self, name: str, scope: Scope | None = None) -> LoadBalancer | None:
        return named(await self.store.load_balancers(), name, scope)

    async def load_balancer(self, name: str, scope: Scope | None = None) -> LoadBalancer:
        found = await self._find_load_balancer(name, scope)
        if found is None:
            raise NotFound(f"load balancer {name} does not exist{where(scope)}", "ResourceNotFound")
        return found

    async def load_balancers(self, scope: Scope | None = None) -> list[LoadBalancer]:
        return in_scope(await self.store.load_balancers(), scope)

    async def delete_load_balancer(self, name: str, scope: Scope | None = None) -> None:
        """Refused while a scale set uses one of its probes, as Azure refuses it."""
        async with self._writing(LB_LOCK):
            balancer = await self.load_balancer(name, scope)
            users = [m.name for m in await self.store.list_scale_sets() if probe_name(m, balancer) is not None]
            if users:
                raise Conflict(
                    f"load balancer {balancer.name} is in use by scale set(s) {', '.join(users)}",
                    "LoadBalancerInUseByVirtualMachineScaleSet",
                )
            await self.store.delete_load_balancer(balancer.name)

    async def put_image_definition(
        self, definition: ImageDefinition, *, resource_group: str = "default", subscription: str = "local"
    ) -> None:
        """Creates or updates an image definition; its gallery is made with it when it does not exist yet (a gallery
        of that name in another group is a conflict, as for any gallery name)."""
        wanted = Gallery(definition.gallery, resource_group, subscription)
        existing = await self._find_gallery(definition.gallery)
        if existing is None:
            await self.put_gallery(wanted)
        else:
            same_name(existing, wanted, "gallery", "GalleryNameTaken")
        await self.store.put_image_definition(definition)
        self.changes.bump()

    async def delete_image_definition(self, gallery: str, image: str, scope: Scope | None = None) -> None:
        """As Azure: refused while it has versions (delete them first)."""
        definition = await self.image_definition(gallery, image, scope)
        versions = await self.image_versions(definition.gallery, definition.name)
        if versions:
            raise Conflict(
                f"image definition {definition.gallery}/{definition.name} has {len(versions)} version(s): delete them "
                "first",
                "CannotDeleteResource",
            )
        await self.store.delete_image_definition(definition.gallery, definition.name)
        self.changes.bump()

    async def all_image_definitions(self) -> list[ImageDefinition]:
        return await self.store.image_definitions()

    async def image_definitions(self, gallery: str, scope: Scope | None = None) -> list[ImageDefinition]:
        found = await self.gallery(gallery, scope)
        return [d for d in await self.store.image_definitions() if d.gallery.lower() == found.name.lower()]

    async def image_definition(self, gallery: str, image: str, scope: Scope | None = None) -> ImageDefinition:
        if scope is not None:
            await self.gallery(gallery, scope)
        found = next(
            (
                d
                for d in await self.store.image_definitions()
                if (d.gallery.lower(), d.name.lower()) == (gallery.lower(), image.lower())
            ),
            None,
        )
        if found is None:
            raise NotFound(f"image definition {gallery}/{image} does not exist", "GalleryImageNotFound")
        return found

    async def publish_version(self, version: ImageVersion, scope: Scope | None = None) -> None:
        await self.image_definition(version.gallery, version.image, scope)
        # A misspelt artefact would otherwise become 'latest' and fail every instance it reaches.
        if version.artifact:
            await self._require_image(version, "properties.storageProfile.source.overhaul.containerImage")
        if version.disk_image:
            await self._require_image(version, "properties.storageProfile.source.overhaul.diskImage", vm=True)
        await self.store.put_image_version(version)
        self.changes.bump()

    async def all_image_versions(self) -> list[ImageVersion]:
        return await self.store.image_versions()

    async def image_versions(self, gallery: str, image: str, scope: Scope | None = None) -> list[ImageVersion]:
        definition = await self.image_definition(gallery, image, scope)
        return [
            v
            for v in await self.store.image_versions()
            if (v.gallery, v.image) == (definition.gallery, definition.name)
        ]

    async def image_version(self, gallery: str, image: str, version: str, scope: Scope | None = None) -> ImageVersion:
        found = next((v for v in await self.image_versions(gallery, image, scope) if v.version == version), None)
        if found is None:
            raise NotFound(f"image version {gallery}/{image}/{version} does not exist", "GalleryImageVersionNotFound")
        return found

    async def delete_image_version(self, gallery: str, image: str, version: str, scope: Scope | None = None) -> None:
        found = await self.image_version(gallery, image, version, scope)
        await self.store.delete_image_version(found.gallery, found.image, found.version)
        self.changes.bump()

    # --- scale sets ---------------------------------------------------------------------------------------

    async def find(self, ref: ScaleSetRef | str) -> ScaleSet | None:
        ref = as_ref(ref)
        model = await self.store.get_scale_set(ref.name)
        return model if model is not None and ref.matches(model) else None

    async def get_scale_set(self, ref: ScaleSetRef | str) -> ScaleSet:
        ref = as_ref(ref)
        model = await self.find(ref)
        if model is None:
            raise NotFound(
                f"scale set {ref.name} does not exist in resource group {ref.resource_group}", "ResourceNotFound"
            )
        return model

    async def list_scale_sets(
        self, subscription: str | None = None, resource_group: str | None = None
    ) -> list[ScaleSet]:
        return [
            m
            for m in await self.store.list_scale_sets()
            if (subscription is None or m.subscription.lower() == subscription.lower())
            and (resource_group is None or m.resource_group.lower() == resource_group.lower())
        ]

    async def _active(self, name: str) -> list[Attempt]:
        return [s.attempt for s in await self.store.attempts(name) if not s.attempt.done]

    async def _settle(self, name: str) -> None:
        """Conflict while an attempt rolls forward; waits out one that is only finishing its clean-up."""
        active = await self._active(name)
        if any(not a.status.terminal for a in active):
            raise Conflict(f"a rolling upgrade of {name} is in progress", "RollingUpgradeInProgress")
        if active:
            self.supervisor.ensure(name)
            await self.supervisor.wait_idle(name, self.settings.action_timeout)
            if await self._active(name):
                raise Conflict(f"a rolling upgrade of {name} is still finishing", "RollingUpgradeInProgress")

    async def create_or_update(
        self,
        doc: Any,
        *,
        name: str,
        resource_group: str = DEFAULT_RESOURCE_GROUP,
        subscription: str = DEFAULT_SUBSCRIPTION,
    ) -> ScaleSet:
        """PUT semantics: validate, store, and make the engine match the capacity (new instances on the
        resolved image; removed ids deleted, their data disks kept)."""
        async with self._writing(name):
            model, _ = await self._create_or_update(ScaleSetRef(subscription, resource_group, name), doc)
            return model

    async def put_scale_set(self, ref: ScaleSetRef, body: Any, *, patch: bool = False) -> tuple[ScaleSet, bool]:
        """Azure's PUT (properties left out keep their values) or PATCH (a JSON merge patch), read and applied
        under the scale set's write lock. Returns the model and whether it was created."""
        async with self._writing(ref.name):
            current = await self.find(ref)
            if patch and current is None:
                await self.get_scale_set(ref)  # NotFound
            if current is not None:
                if not isinstance(body, Mapping):
                    raise InvalidInput("the request body must be a JSON object", target="")
                previous = current.to_json()
                body = keep_secrets(previous, merge_patch(previous, body))
            return await self._create_or_update(ref, body)

    async def _create_or_update(self, ref: ScaleSetRef, doc: Any) -> tuple[ScaleSet, bool]:
        name, resource_group, subscription = ref.name, ref.resource_group, ref.subscription
        try:
            model = parse_scale_set(doc, name=name, resource_group=resource_group, subscription=subscription)
            model = resolve_probe(model, await self.store.load_balancers())
            check_new_model(model)
        except ModelError as exc:
            raise InvalidInput(str(exc), target=exc.path) from exc
        previous = await self.store.get_scale_set(name)
        if previous is not None and not ref.matches(previous):
            raise Conflict(
                f"a scale set named {previous.name} exists in resource group {previous.resource_group} "
                f"(subscription {previous.subscription}); scale set names are unique on this host because they "
                "name its instances",
                "ScaleSetNameInUse",
                "name",
            )
        if previous is not None:
            try:
                check_kind_change(previous, model)
            except ModelError as exc:
                raise InvalidInput(str(exc), target=exc.path) from exc
            # The first spelling of a name stays its canonical one, as ARM keeps it.
            model = replace(
                model,
                name=previous.name,
                resource_group=previous.resource_group,
                subscription=previous.subscription,
            )
            if await self._active(previous.name):
                if model.to_json() == previous.to_json():
                    return previous, False
                raise Conflict(
                    f"a rolling upgrade of {previous.name} is in progress: the model cannot change until it ends "
                    "(cancel it first)",
                    "RollingUpgradeInProgress",
                )
        image = await self.instances.resolve(model)
        states = await self._observe(model.name)
        known = {
            v.version: v
            for v in await self.store.image_versions()
            if (v.gallery, v.image) == (image.gallery, image.image)
        }
        plans: list[tuple[int, ImageVersion]] = []
        for instance_id in range(model.capacity):
            state = states.get(instance_id)
            # An existing instance keeps its version (ensure_running only starts it); a new one gets the image's.
            existing = known.get(state.version or "") if state is not None else None
            plans.append((instance_id, existing or image))
        if any(i not in states for i in range(model.capacity)):
            await self._require_image(
                image, "properties.virtualMachineProfile.storageProfile.imageReference", vm=model.is_vm
            )
        await self.store.put_scale_set(model, self.clock())
        try:
            for instance_id, version in plans:
                await self.driver.ensure_running(
                    await self.instances.spec(model, instance_id, version.version, version)
                )
            for instance_id in sorted(set(states) - set(range(model.capacity))):
                await self.driver.delete(
                    self.instances.handle(previous or model, instance_id, states[instance_id].version)
                )
                await self.instances.forget(model.name, instance_id)
        except DriverError as exc:
            raise engine_error(exc) from exc
        if model.is_vm:
            # A VM whose host port was taken when it booted listens on another one.
            states = await self._observe(model.name)
            await self.instances.follow(model, states, range(model.capacity))
        else:
            await self.instances.watch(model, states)
        self.changes.bump()
        changed = previous is not None and model_digest(model) != model_digest(previous)
        if changed and model.capacity > 0 and model.upgrade_policy.mode != "Manual":
            # Azure's upgradePolicy.mode for model changes: Automatic applies it to every instance at once,
            # Rolling in health-gated batches; Manual waits for `vmss update-instances`.
            await self._start_model_upgrade(model, states, None)
        return model, previous is None

    async def manual_upgrade(self, ref: ScaleSetRef | str, instance_ids: list[int]) -> Attempt:
        """Azure's manualupgrade (`az vmss update-instances`): the chosen instances, failed ones included, get new
        OS disks made with the current model, keeping the version they run; health-gated in batches when the mode
        is Rolling, all at once otherwise."""
        ref = as_ref(ref)
        async with self._writing(ref.name):
            model = await self.get_scale_set(ref)
            await self._settle(model.name)
            check_instance_ids(model, instance_ids)
            if not instance_ids:
                raise InvalidInput("instanceIds: name at least one instance", target="instanceIds")
            return await self._start_model_upgrade(model, await self._observe(model.name), tuple(sorted(instance_ids)))

    async def _start_model_upgrade(
        self, model: ScaleSet, states: dict[int, InstanceState], scope: tuple[int, ...] | None
    ) -> Attempt:
        """An attempt that moves instances onto the current model; their OS image stays the one they all run (the
        model's image when they differ)."""
        versions = {s.version for i, s in states.items() if s.version and (scope is None or i in scope)}
        rolling = model.upgrade_policy.rolling
        policy = rolling
        if model.upgrade_policy.mode != "Rolling":
            policy = RollingUpgradePolicy(
                max_batch_instance_percent=100,
                max_unhealthy_instance_percent=100,
                max_unhealthy_upgraded_instance_percent=100,
                instance_health_timeout=rolling.instance_health_timeout,
            )
        version = versions.pop() if len(versions) == 1 else None
        log.info("model upgrade of %s (%s mode)", model.name, model.upgrade_policy.mode)
        return await self._start(
            model, StartedBy.USER, version, states, target_model=model_digest(model), scope=scope, policy=policy
        )

    async def delete_scale_set(self, ref: ScaleSetRef | str) -> None:
        ref = as_ref(ref)
        async with self._writing(ref.name):
            model = await self.get_scale_set(ref)
            await self._settle(model.name)
            states = await self._observe(model.name)
            # With no instance left (scaled in to 0), instance 0 still stands for the scale set: deleting it is
            # how a driver hears to remove the data disks of instances scaled in before.
            leftover: dict[int, str | None] = {i: s.version for i, s in states.items()} or {0: None}
            try:
                for instance_id, version in leftover.items():
                    await self.driver.delete(self.instances.handle(model, instance_id, version), keep_data=False)
            except DriverError as exc:
                raise engine_error(exc) from exc
            for instance_id in set(range(model.capacity)) | set(states):
                await self.health.unwatch((model.name, instance_id))
            await self.store.delete_scale_set(model.name)
            self.changes.bump()

    async def instances_of(self, ref: ScaleSetRef | str) -> list[InstanceInfo]:
        model = await self.get_scale_set(ref)
        states = await self._observe(model.name)
        views = instance_views(model, states, self.health, self.clock())
        ports = await self.store.instance_ports(model.name)
        infos = []
        for i in range(model.capacity):
            report = self.health.report((model.name, i))
            state = states.get(i)
            address, host_ports = where_it_listens(ports.get(i, {}), state)
            infos.append(
                InstanceInfo(
                    i,
                    model.instance_name(i),
                    views[i],
                    host_ports,
                    bool(state and state.running),
                    bool(state and state.previous),
                    report.detail if report else "",
                    address,
                )
            )
        return infos

    def health_report(self, scale_set: str, instance_id: int) -> HealthReport | None:
        return self.health.report((scale_set, instance_id))

    @property
    def watch_errors(self) -> int:
        return self.health.watch_errors

    # --- rolling upgrades ---------------------------------------------------------------------------------

    async def start_rolling_upgrade(
        self, ref: ScaleSetRef | str, *, started_by: StartedBy = StartedBy.USER, version: str | None = None
    ) -> Attempt:
        """Starts an attempt towards the model's image (or ``version``); it runs in the background."""
        ref = as_ref(ref)
        async with self._writing(ref.name):
            model = await self.get_scale_set(ref)
            await self._settle(model.name)
            return await self._start(model, started_by, version, None)

    async def start_due_upgrade(self, ref: ScaleSetRef, settings: AutoUpgradeSettings) -> float | None:
        """Azure's automatic OS upgrade: starts a platform attempt when the gallery's latest version is due for
        the scale set. Decided under the scale set's write lock, so a create or update in progress is seen whole.
        Returns when the upgrade falls due if it is not due yet."""
        async with self._writing(ref.name):
            model = await self.find(ref)
            if model is None or await self._active(model.name):
                return None
            states = await self._observe(model.name)
            due = due_upgrade(
                model,
                definitions=await self.store.image_definitions(),
                versions=await self.store.image_versions(),
                instance_versions=[states[i].version if i in states else None for i in range(model.capacity)],
                attempts=[s.attempt for s in await self.store.attempts(model.name)],
                settings=settings,
            )
            if due is None:
                return None
            if due.due_at > self.clock():
                return due.due_at
            if any(i not in states or states[i].current is None for i in range(model.capacity)):
                # A listing taken while the engine is busy can miss an instance: ask once more before acting on it.
                states = await self._observe(model.name)
                if all(states.get(i) and states[i].version == due.target.version for i in range(model.capacity)):
                    return None
            log.info("automatic OS upgrade of %s to %s", model.name, due.target.version)
            await self._start(model, StartedBy.PLATFORM, due.target.version, states)
            return None

    async def _start(
        self,
        model: ScaleSet,
        started_by: StartedBy,
        version: str | None,
        states: dict[int, InstanceState] | None,
        *,
        target_model: str | None = None,
        scope: tuple[int, ...] | None = None,
        policy: RollingUpgradePolicy | None = None,
    ) -> Attempt:
        target = await self.instances.resolve(model, version)
        await self._require_image(target, f"image version {target.version}", vm=model.is_vm)
        if states is None:
            states = await self._observe(model.name)
        now = self.clock()
        attempt = start(
            attempt_id=uuid.uuid4().hex,
            scale_set=model.name,
            target_version=target.version,
            started_by=started_by,
            disable_automatic_rollback=model.upgrade_policy.automatic.disable_automatic_rollback,
            policy=policy or attempt_policy(model, started_by),
            capacity=model.capacity,
            views=instance_views(model, states, self.health, now),
            now=now,
            # Azure defers automatic OS upgrades only: a person starting one has approved it.
            deferred=started_by is StartedBy.PLATFORM and model.upgrade_policy.automatic.os_rolling_upgrade_deferral,
            target_model=target_model,
            scope=scope,
        )
        busy = await self.store.start_attempt(attempt, image_reference_for(model, attempt))
        if busy is not None:
            raise Conflict(f"a rolling upgrade of {model.name} is in progress ({busy})", "RollingUpgradeInProgress")
        self.reconciler.announce(None, attempt)
        if not attempt.done:
            self.supervisor.ensure(model.name, states)
        return attempt

    async def reimage_instances(self, ref: ScaleSetRef | str, instance_ids: list[int]) -> None:
        """Azure's reimage: a fresh OS disk from the model's image for each chosen instance, at once (not
        health-gated; rolling upgrades are). Data disks and host ports are kept. The image is checked before
        any instance is touched, and an instance whose new OS disk cannot be made gets its previous one back."""
        ref = as_ref(ref)
        async with self._writing(ref.name):
            model = await self.get_scale_set(ref)
            await self._settle(model.name)
            check_instance_ids(model, instance_ids)
            image = await self.instances.resolve(model)
            await self._require_image(image, f"image version {image.version}", vm=model.is_vm)
            disk = uuid.uuid4().hex[:8]

            async def one(instance_id: int) -> str | None:
                spec = await self.instances.spec(model, instance_id, image.version, image)
                spec = replace(spec, os_disk=f"{image.version}+{disk}")
                error = await self.reconciler.step(model.name, ActionKind.REIMAGE, spec)
                if model.is_vm and error is None:
                    await self.instances.follow(model, await self._observe(model.name), [instance_id])
                self.health.reset((model.name, instance_id))
                if error is not None:
                    # The new OS disk could not be made: the previous one runs again.
                    rollback_error = await self.reconciler.step(model.name, ActionKind.ROLLBACK, spec)
                    return (
                        error
                        if rollback_error is None
                        else f"{error}; restoring the previous OS disk: {rollback_error}"
                    )
                await self.reconciler.step(model.name, ActionKind.COMMIT, spec)
                return None

            try:
                # Leftovers of an earlier reimage that was cut short are finished first.
                await self._repair(model)
                async with asyncio.timeout(self.settings.action_timeout):
                    outcomes = await asyncio.gather(*(one(i) for i in sorted(set(instance_ids))))
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

    async def cancel(self, ref: ScaleSetRef | str) -> Attempt:
        """Saved in the store (the reconciler reads it on every pass); the batch in flight ends first."""
        model = await self.get_scale_set(ref)
        running = [a for a in await self._active(model.name) if not a.status.terminal]
        if not running or not await self.store.request_cancel(running[0].id):
            raise Conflict(f"no rolling upgrade of {model.name} is in progress", "NoRollingUpgradeInProgress")
        self.reconciler.wake(running[0].id)
        return request_cancel(running[0], self.clock())

    async def approve(self, ref: ScaleSetRef | str, instance_ids: list[int] | None = None) -> Attempt:
        """approveRollingUpgrade: the deferred OS upgrades of ``instance_ids`` (default: every instance) may go
        ahead, now for those awaiting approval, at once when their batch comes for the others."""
        model = await self.get_scale_set(ref)
        ids = list(range(model.capacity)) if instance_ids is None else instance_ids
        check_instance_ids(model, ids)
        running = [a for a in await self._active(model.name) if not a.status.terminal]
        if not running or not running[0].deferred or not await self.store.approve(running[0].id, ids):
            raise Conflict(
                f"no rolling upgrade of {model.name} awaits approval (osRollingUpgradeDeferral defers automatic "
                "OS upgrades only)",
                "NoDeferredRollingUpgrade",
            )
        self.reconciler.wake(running[0].id)
        return running[0]

    async def latest(self, ref: ScaleSetRef | str) -> StoredAttempt | None:
        model = await self.get_scale_set(ref)
        attempts = await self.store.attempts(model.name)
        return attempts[0] if attempts else None

    async def history(self, ref: ScaleSetRef | str) -> list[StoredAttempt]:
        model = await self.get_scale_set(ref)
        return await self.store.attempts(model.name)

    async def find_attempt(self, attempt_id: str) -> Attempt | None:
        stored = await self.store.get_attempt(attempt_id)
        return stored.attempt if stored else None

    async def wait_attempt(self, attempt_id: str, timeout: float) -> Attempt:
        """Until the attempt ends (tests and `--wait` use it); TimeoutError past ``timeout``."""
        found = await self.find_attempt(attempt_id)
        if found is None:
            raise NotFound(f"attempt {attempt_id} not found")
        if found.done:
            return found
        ended = self._attempt_ended.setdefault(attempt_id, asyncio.Event())
        found = await self.find_attempt(attempt_id)  # it may have ended between the two looks
        if found is not None and not found.done:
            async with asyncio.timeout(timeout):
                await ended.wait()
            found = await self.find_attempt(attempt_id)
        assert found is not None
        return found
