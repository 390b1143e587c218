"""An in-memory driver for fast tests and large benchmarks: instant, and with the real driver's semantics."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace

from overhaul.core.triage import Fault
from overhaul.localhost import free_port
from overhaul.ports.driver import DriverError, InstanceSpec, InstanceState, OsDisk


@dataclass
class MemoryDriver:
    instances: dict[str, dict[int, InstanceState]] = field(default_factory=dict)
    fail_reimage: Callable[[InstanceSpec], bool] = lambda spec: False
    calls: list[tuple[str, str]] = field(default_factory=list)
    # Images this engine lacks (every other reference is present).
    missing_images: set[str] = field(default_factory=set)
    # Images whose instances exit as soon as they start (a broken build).
    exiting_images: set[str] = field(default_factory=set)
    _previous_ports: dict[tuple[str, int], dict[int, int]] = field(default_factory=dict)
    # The platform tags each instance's current OS disk sees.
    tags: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)
    address: str = "127.0.0.1"  # where its instances publish (a simulated host's own address)
    # The images it holds; None: every image not missing (a host's engine starts with none of the gallery's).
    images: set[str] | None = None
    # A copy of an image into this engine fails with this (a replication cut).
    load_error: str | None = None

    async def ping(self) -> None:
        return None

    async def host_port(self, taken: Collection[int]) -> int:
        # Real ports: tests serve fake agents on the ports an instance publishes.
        return free_port(taken)

    async def image_present(self, image: str, *, vm: bool = False) -> bool:
        return image not in self.missing_images and (self.images is None or image in self.images)

    async def copy_image_to(self, image: str, target: object, progress: Callable[[int], None]) -> None:
        """Another memory driver's engine gets the image (the gallery's replication)."""
        if not isinstance(target, MemoryDriver):
            raise DriverError(f"copy image {image}: a memory engine copies only to another")
        if not await self.image_present(image):
            raise DriverError(f"copy image {image}: no such image {image} in the engine")
        progress(50)
        if target.load_error is not None:
            raise DriverError(f"load image {image}: {target.load_error}")
        target.missing_images.discard(image)
        if target.images is not None:
            target.images.add(image)
        progress(100)

    def _set(self, spec: InstanceSpec, state: InstanceState) -> None:
        self.instances.setdefault(spec.scale_set, {})[spec.instance_id] = state

    def _get(self, spec: InstanceSpec) -> InstanceState | None:
        return self.instances.get(spec.scale_set, {}).get(spec.instance_id)

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        return {i: replace(s, address=self.address) for i, s in self.instances.get(scale_set, {}).items()}

    async def ensure_running(self, spec: InstanceSpec) -> None:
        self.calls.append(("ensure_running", spec.name))
        state = self._get(spec)
        if state is None or state.current is None:
            if not await self.image_present(spec.image):
                raise DriverError(f"create {spec.name}: no such image {spec.image} in the engine")
            disk = OsDisk(spec.version, spec.image, True, spec.model_digest or None)
            self._set(spec, InstanceState(spec.instance_id, disk, ports=spec.ports))
        elif not state.current.running:
            self._set(spec, replace(state, current=replace(state.current, running=True)))

    async def reimage(self, spec: InstanceSpec) -> None:
        self.calls.append(("reimage", spec.name))
        state = self._get(spec) or InstanceState(spec.instance_id, None)
        current = state.current
        same = (
            current is not None
            and current.version == spec.version
            and current.model_digest == (spec.model_digest or None)
        )
        if same and not spec.os_disk:
            return
        previous = state.current or state.previous
        if not await self.image_present(spec.image):
            raise DriverError(f"create {spec.name}: no such image {spec.image} in the engine")
        if self.fail_reimage(spec):
            self._set(spec, InstanceState(spec.instance_id, None, previous))
            raise DriverError(f"start {spec.name}: the image's command could not run (injected)", Fault.IMAGE_FAILED)
        running = spec.image not in self.exiting_images
        self.tags.pop((spec.scale_set, spec.instance_id), None)  # a new OS disk: a new config drive
        if previous is not None:
            # Stopped, unless it stays up beside the new one (maxSurge) on the host ports it had.
            previous = replace(previous, running=spec.surge and previous.running)
            if state.current is not None:
                self._previous_ports[(spec.scale_set, spec.instance_id)] = dict(state.ports)
        disk = OsDisk(spec.version, spec.image, running, spec.model_digest or None)
        self._set(spec, InstanceState(spec.instance_id, disk, previous, ports=spec.ports))

    async def commit(self, spec: InstanceSpec) -> None:
        self.calls.append(("commit", spec.name))
        state = self._get(spec)
        self._previous_ports.pop((spec.scale_set, spec.instance_id), None)
        if state is not None:
            self._set(spec, InstanceState(spec.instance_id, state.current, None, ports=state.ports))

    async def rollback(self, spec: InstanceSpec) -> None:
        self.calls.append(("rollback", spec.name))
        state = self._get(spec)
        if state is None or (state.previous is None and state.current is None):
            raise DriverError(f"rollback {spec.name}: neither {spec.name} nor its previous OS disk exists")
        if state.previous is not None:
            self.tags.pop((spec.scale_set, spec.instance_id), None)
            restored = replace(state.previous, running=True)
            ports = self._previous_ports.pop((spec.scale_set, spec.instance_id), state.ports)
            self._set(spec, InstanceState(spec.instance_id, restored, None, ports=ports))

    async def notify(self, spec: InstanceSpec, tags: Mapping[str, str]) -> None:
        self.calls.append(("notify", spec.name))
        self.tags[(spec.scale_set, spec.instance_id)] = dict(tags)

    async def delete(self, spec: InstanceSpec, *, keep_data: bool = True) -> None:
        self.calls.append(("delete", spec.name))
        self.instances.get(spec.scale_set, {}).pop(spec.instance_id, None)

    async def close(self) -> None:
        return None
