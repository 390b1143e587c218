"""The orchestrator's Python-level service interface: scale sets, gallery, rolling upgrades, history.

The REST API and the CLI are thin layers over this. It owns the background tasks (one reconciler per running
attempt, the health watches) and cancels them on close; attempts left running by a crash resume on start.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.changes import Changes
from orchestrator.drivers.base import Driver, InstanceSpec, InstanceState
from orchestrator.gallery import ImageDefinition, ImageVersion, resolve
from orchestrator.health import HealthMonitor, HealthSettings
from orchestrator.model import ModelError, ScaleSet, parse_scale_set
from orchestrator.planner import InstanceView
from orchestrator.reconciler import ACTION_TIMEOUT, Reconciler, instance_views
from orchestrator.rollout import Attempt, StartedBy, request_cancel, start
from orchestrator.store import Store, StoredAttempt

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with a stable code and an HTTP status, in ARM's terms."""

    status = 400
    code = "BadRequest"

    def __init__(self, message: str, code: str | None = None, target: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.target = target
        if code is not None:
            self.code = code


class NotFound(ServiceError):
    status = 404
    code = "NotFound"


class Conflict(ServiceError):
    status = 409
    code = "Conflict"


class InvalidInput(ServiceError):
    status = 400
    code = "InvalidParameter"


def allocate_port(taken: set[int]) -> int:
    """A free 127.0.0.1 port that no other instance holds."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port
    raise ServiceError("no free host port on 127.0.0.1", "PortsExhausted")


@dataclass(frozen=True)
class InstanceInfo:
    instance_id: int
    name: str
    view: InstanceView
    ports: Mapping[int, int]
    running: bool
    has_previous_os_disk: bool


class Orchestrator:
    def __init__(
        self,
        store: Store,
        driver: Driver,
        *,
        health: HealthSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.driver = driver
        self.clock = clock
        self.monitor = HealthMonitor(health, clock)
        self.reconciler = Reconciler(
            store, driver, self.monitor, self.spec_for, clock, self._image_reference_for, self._attempt_changed
        )
        self._runs: dict[str, asyncio.Task[Attempt]] = {}
        self._attempt_events: dict[str, asyncio.Event] = {}
        self.changes = Changes()
        self.attempt_listeners: list[Callable[[Attempt], None]] = []

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Watches every instance and resumes attempts a crash left running."""
        for model in self.store.list_scale_sets():
            self._watch(model)
            latest = self.latest(model.name)
            if latest is not None and not latest.attempt.done:
                log.info("resuming attempt %s of %s", latest.attempt.id, model.name)
                self._launch(model, latest.attempt)

    async def close(self) -> None:
        runs = list(self._runs.values())
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        self._runs.clear()
        await self.monitor.close()

    # --- gallery ------------------------------------------------------------------------------------------

    def put_image_definition(self, definition: ImageDefinition) -> None:
        self.store.put_image_definition(definition)
        self.changes.bump()

    def image_definition(self, gallery: str, image: str) -> ImageDefinition:
        found = next((d for d in self.store.image_definitions() if (d.gallery, d.name) == (gallery, image)), None)
        if found is None:
            raise NotFound(f"image definition {gallery}/{image} does not exist", "GalleryImageNotFound")
        return found

    def publish_version(self, version: ImageVersion) -> None:
        self.image_definition(version.gallery, version.image)
        self.store.put_image_version(version)
        self.changes.bump()

    def image_versions(self, gallery: str, image: str) -> list[ImageVersion]:
        self.image_definition(gallery, image)
        return [v for v in self.store.image_versions() if (v.gallery, v.image) == (gallery, image)]

    def image_version(self, gallery: str, image: str, version: str) -> ImageVersion:
        found = next((v for v in self.image_versions(gallery, image) if v.version == version), None)
        if found is None:
            raise NotFound(f"image version {gallery}/{image}/{version} does not exist", "GalleryImageVersionNotFound")
        return found

    def delete_image_version(self, gallery: str, image: str, version: str) -> None:
        self.image_version(gallery, image, version)
        self.store.delete_image_version(gallery, image, version)
        self.changes.bump()

    def resolve(self, model: ScaleSet, version: str | None = None) -> ImageVersion:
        ref = model.image_reference if version is None else model.image_reference.with_version(version)
        try:
            return resolve(ref, self.store.image_definitions(), self.store.image_versions(), model.location)
        except ModelError as exc:
            raise InvalidInput(str(exc), target=exc.path) from exc

    # --- instances ----------------------------------------------------------------------------------------

    def _metadata(self, model: ScaleSet, instance_id: int, version: ImageVersion) -> dict[str, Any]:
        image = model.image_reference.to_json()
        image["exactVersion"] = version.version
        if "id" not in image:
            image["version"] = version.version
        return {
            "instanceId": str(instance_id),
            "scaleSet": model.name,
            "resourceGroup": model.resource_group,
            "subscriptionId": model.subscription,
            "location": model.location,
            "imageReference": image,
            "extensionProfile": {"extensions": [dict(e.raw) for e in model.extensions]},
            "customData": model.custom_data,
        }

    def _ports(self, model: ScaleSet, instance_id: int) -> dict[int, int]:
        if not model.published_ports:
            return {}
        known = self.store.instance_ports(model.name).get(instance_id, {})
        taken = self.store.all_host_ports()
        ports = {cport: known.get(cport) or allocate_port(taken) for cport in model.published_ports}
        if ports != known:
            self.store.put_instance_ports(model.name, instance_id, ports)
        return ports

    def spec_for(
        self, model: ScaleSet, instance_id: int, version: str, image: ImageVersion | None = None
    ) -> InstanceSpec:
        if image is None or image.version != version:
            image = self.resolve(model, version)
        return InstanceSpec(
            scale_set=model.name,
            instance_id=instance_id,
            image=image.artifact,
            version=image.version,
            ports=self._ports(model, instance_id),
            volumes=tuple((f"{model.name}_{instance_id}_lun{d.lun}", d.mount_path) for d in model.data_disks),
            metadata=self._metadata(model, instance_id, image),
            command=model.engine.command,
            stop_timeout=model.engine.stop_timeout,
            systemd=model.engine.systemd,
        )

    def _watch(self, model: ScaleSet) -> None:
        ports = self.store.instance_ports(model.name)
        for instance_id in range(model.capacity):
            host = ports.get(instance_id, {})
            key = (model.name, instance_id)
            if model.uses_agent and model.engine.agent_port in host:
                self.monitor.watch_agent(key, host[model.engine.agent_port])
            elif model.health_probe is not None and model.health_probe.port in host:
                self.monitor.watch_probe(key, model.health_probe, host[model.health_probe.port])

    async def instances(self, name: str) -> list[InstanceInfo]:
        model = self.get_scale_set(name)
        states = await self.driver.observe(name)
        views = instance_views(model, states, self.monitor, self.clock())
        ports = self.store.instance_ports(name)
        return [
            InstanceInfo(
                i,
                model.instance_name(i),
                views[i],
                ports.get(i, {}),
                bool(states.get(i) and states[i].running),
                bool(states.get(i) and states[i].previous),
            )
            for i in range(model.capacity)
        ]

    # --- scale sets ---------------------------------------------------------------------------------------

    def get_scale_set(self, name: str) -> ScaleSet:
        model = self.store.get_scale_set(name)
        if model is None:
            raise NotFound(f"scale set {name} does not exist", "ResourceNotFound")
        return model

    async def create_or_update(
        self, doc: Any, *, name: str, resource_group: str = "default", subscription: str = "local"
    ) -> ScaleSet:
        """PUT semantics: validate, store, and make the engine match the capacity (new instances on the
        resolved image; removed ids deleted, their data disks kept)."""
        try:
            model = parse_scale_set(doc, name=name, resource_group=resource_group, subscription=subscription)
        except ModelError as exc:
            raise InvalidInput(str(exc), target=exc.path) from exc
        image = self.resolve(model)
        previous = self.store.get_scale_set(name)
        self.store.put_scale_set(model, self.clock())
        states = await self.driver.observe(name)
        known = {v.version for v in self.store.image_versions()}
        for instance_id in range(model.capacity):
            state = states.get(instance_id)
            # An existing instance keeps its version (ensure_running only starts it); a new one gets the image's.
            version = state.version if state and state.version in known else image.version
            await self.driver.ensure_running(self.spec_for(model, instance_id, version or image.version, image))
        for instance_id in sorted(set(states) - set(range(model.capacity))):
            spec = self.spec_for(previous or model, instance_id, states[instance_id].version or image.version)
            await self.driver.delete(spec)
            await self.monitor.unwatch((name, instance_id))
            self.store.delete_instance(name, instance_id)
        self._watch(model)
        self.changes.bump()
        return model

    async def delete_scale_set(self, name: str) -> None:
        model = self.get_scale_set(name)
        await self._ensure_idle(name)
        states = await self.driver.observe(name)
        for instance_id, state in states.items():
            spec = InstanceSpec(
                name,
                instance_id,
                "",
                state.version or "",
                volumes=tuple((f"{name}_{instance_id}_lun{d.lun}", d.mount_path) for d in model.data_disks),
            )
            await self.driver.delete(spec, keep_data=False)
        for instance_id in range(model.capacity):
            await self.monitor.unwatch((name, instance_id))
        self.store.delete_scale_set(name)
        self.changes.bump()

    # --- rolling upgrades ---------------------------------------------------------------------------------

    def _image_reference_for(self, attempt: Attempt) -> Mapping[str, Any]:
        model = self.store.get_scale_set(attempt.scale_set)
        ref = model.image_reference.to_json() if model else {}
        if "id" in ref:
            ref["id"] = ref["id"].split("/versions/")[0] + f"/versions/{attempt.target_version}"
        else:
            ref["version"] = attempt.target_version
        return ref

    def _attempt_changed(self, attempt: Attempt) -> None:
        for listener in self.attempt_listeners:
            listener(attempt)
        if attempt.done:
            self.changes.bump()
            event = self._attempt_events.get(attempt.id)
            if event is not None:
                event.set()

    def _launch(self, model: ScaleSet, attempt: Attempt, states: Mapping[int, InstanceState] | None = None) -> None:
        self._attempt_events.setdefault(attempt.id, asyncio.Event())
        task = asyncio.get_running_loop().create_task(self._run(model, attempt, states), name=f"rollout-{model.name}")
        self._runs[model.name] = task

    async def _run(self, model: ScaleSet, attempt: Attempt, states: Mapping[int, InstanceState] | None) -> Attempt:
        try:
            return await self.reconciler.run(model, attempt, states)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rolling upgrade %s of %s stopped on an error", attempt.id, model.name)
            raise

    async def _ensure_idle(self, name: str) -> None:
        """Conflict while an attempt runs; waits out a reconciler that is only finishing clean-up."""
        if not self.running(name):
            return
        latest = self.latest(name)
        if latest is None or not latest.attempt.status.terminal:
            raise Conflict(f"a rolling upgrade of {name} is in progress", "RollingUpgradeInProgress")
        await asyncio.wait({self._runs[name]}, timeout=ACTION_TIMEOUT)

    def running(self, name: str) -> bool:
        task = self._runs.get(name)
        return task is not None and not task.done()

    async def start_rolling_upgrade(
        self, name: str, *, started_by: StartedBy = StartedBy.USER, version: str | None = None
    ) -> Attempt:
        """Starts an attempt towards the model's image (or ``version``); it runs in the background."""
        model = self.get_scale_set(name)
        await self._ensure_idle(name)
        target = self.resolve(model, version)
        states = await self.driver.observe(name)
        now = self.clock()
        attempt = start(
            attempt_id=uuid.uuid4().hex,
            scale_set=name,
            target_version=target.version,
            started_by=started_by,
            disable_automatic_rollback=model.upgrade_policy.automatic.disable_automatic_rollback,
            policy=model.upgrade_policy.rolling,
            capacity=model.capacity,
            views=instance_views(model, states, self.monitor, now),
            now=now,
        )
        self.reconciler.cancel_event(name).clear()
        self.store.save_attempt(attempt, self._image_reference_for(attempt))
        if not attempt.done:
            self._launch(model, attempt, states)
        return attempt

    async def reimage_instances(self, name: str, instance_ids: list[int]) -> None:
        """Azure's reimage: a fresh OS disk from the model's image for each chosen instance, at once (not
        health-gated; rolling upgrades are). Data disks and host ports are kept."""
        model = self.get_scale_set(name)
        await self._ensure_idle(name)
        unknown = [i for i in instance_ids if not 0 <= i < model.capacity]
        if unknown:
            raise InvalidInput(f"instanceIds: no instance {unknown[0]} in {name} (0..{model.capacity - 1})")
        image = self.resolve(model)
        disk = uuid.uuid4().hex[:8]

        async def one(instance_id: int) -> None:
            spec = self.spec_for(model, instance_id, image.version)
            spec = replace(spec, os_disk=f"{image.version}+{disk}")
            await self.driver.reimage(spec)
            self.monitor.reset((name, instance_id))
            await self.driver.commit(spec)

        async with asyncio.timeout(ACTION_TIMEOUT):
            await asyncio.gather(*(one(i) for i in sorted(set(instance_ids))))

    def cancel(self, name: str) -> Attempt:
        self.get_scale_set(name)
        latest = self.latest(name)
        if latest is None or latest.attempt.status.terminal or not self.running(name):
            raise Conflict(f"no rolling upgrade of {name} is in progress", "NoRollingUpgradeInProgress")
        self.reconciler.cancel_event(name).set()
        return request_cancel(latest.attempt, self.clock())

    def latest(self, name: str) -> StoredAttempt | None:
        attempts = self.store.attempts(name)
        return attempts[0] if attempts else None

    def history(self, name: str) -> list[StoredAttempt]:
        self.get_scale_set(name)
        return self.store.attempts(name)

    def find_attempt(self, attempt_id: str) -> Attempt | None:
        stored = self.store.get_attempt(attempt_id)
        return stored.attempt if stored else None

    async def wait_attempt(self, attempt_id: str, timeout: float) -> Attempt:
        """Until the attempt ends (tests and `--wait` use it); TimeoutError past ``timeout``."""
        event = self._attempt_events.setdefault(attempt_id, asyncio.Event())
        found = self.find_attempt(attempt_id)
        if found is None:
            raise NotFound(f"attempt {attempt_id} not found")
        if not found.done:
            async with asyncio.timeout(timeout):
                await event.wait()
            found = self.find_attempt(attempt_id)
            assert found is not None
        return found
