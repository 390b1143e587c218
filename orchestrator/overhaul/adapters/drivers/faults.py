"""A driver wrapper that injects faults: transient engine errors (before or after the real call, so a step that
happened can look failed), the infrastructure's faults in the engines' own words (a port taken, a container the
engine left behind, an address its network plugin holds, an image gone for a while, a full disk), the image's
failures on reimages, and latency. Seeded, so a failing run replays.

It stands between the runtime and any driver: the chaos tests wrap the in-memory driver with it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from overhaul.core.triage import Fault
from overhaul.ports.driver import Driver, DriverError, EngineUnavailable, InstanceSpec, InstanceState


@dataclass(frozen=True)
class FaultPlan:
    transient: float = 0.1  # chance that a call fails transiently (half of them after the call took effect)
    permanent_reimage: float = 0.05  # chance that a reimage fails for good (before touching the instance)
    latency: float = 0.002  # each call waits up to this long, seconds
    # chance that a reimage, commit or rollback meets an infrastructure fault (before the call takes effect)
    infrastructure: float = 0.0


# The engines' words for infrastructure faults (core/triage.py classifies them; none is the image's).
INFRASTRUCTURE_FAULTS = (
    "start {name}: cannot listen on the TCP port: listen tcp4 127.0.0.1:38901: bind: address already in use",
    "start {name}: container 4f2a must be in Created or Stopped state to be started: container state improper",
    'create {name}: the container name "{name}" is already in use by 9c1e',
    "start {name}: cni plugin bridge failed: 10.88.2.149 has been allocated to 084f, duplicate allocation is not "
    "allowed",
    "create {name}: no such image {image} in the engine",
    "create {name}: write /var/lib/containers/storage: no space left on device",
)


@dataclass
class FaultyDriver:
    inner: Driver
    rng: random.Random
    plan: FaultPlan = field(default_factory=FaultPlan)
    # Instances whose reimage was failed for good, by (scale set, instance id): the only ones that may fail.
    permanent_failures: set[tuple[str, int]] = field(default_factory=set)
    transient_failures: int = 0
    infrastructure_failures: int = 0
    enabled: bool = True

    async def _before(self, what: str) -> None:
        if not self.enabled:
            return
        await asyncio.sleep(self.rng.uniform(0, self.plan.latency))
        if self.rng.random() < self.plan.transient / 2:
            self.transient_failures += 1
            raise EngineUnavailable(f"{what}: engine unreachable (injected)")

    def _infrastructure(self, spec: InstanceSpec) -> None:
        if self.enabled and self.rng.random() < self.plan.infrastructure:
            self.infrastructure_failures += 1
            message = self.rng.choice(INFRASTRUCTURE_FAULTS).format(name=spec.name, image=spec.image)
            raise DriverError(f"{message} (injected)")

    def _after(self, what: str) -> None:
        if self.enabled and self.rng.random() < self.plan.transient / 2:
            self.transient_failures += 1
            raise EngineUnavailable(f"{what}: connection reset after the call (injected)")

    async def ping(self) -> None:
        await self._before("ping")
        await self.inner.ping()

    async def host_port(self, taken: Collection[int]) -> int:
        return await self.inner.host_port(taken)

    async def image_present(self, image: str, *, vm: bool = False) -> bool:
        await self._before(f"inspect image {image}")
        return await self.inner.image_present(image, vm=vm)

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        await self._before(f"list {scale_set}")
        states = await self.inner.observe(scale_set)
        self._after(f"list {scale_set}")
        return states

    async def ensure_running(self, spec: InstanceSpec) -> None:
        await self._before(f"create {spec.name}")
        await self.inner.ensure_running(spec)
        self._after(f"create {spec.name}")

    async def reimage(self, spec: InstanceSpec) -> None:
        await self._before(f"reimage {spec.name}")
        self._infrastructure(spec)
        if self.enabled and self.rng.random() < self.plan.permanent_reimage:
            self.permanent_failures.add((spec.scale_set, spec.instance_id))
            raise DriverError(f"start {spec.name}: the image's command failed (injected)", Fault.IMAGE_FAILED)
        await self.inner.reimage(spec)
        self._after(f"reimage {spec.name}")

    async def commit(self, spec: InstanceSpec) -> None:
        await self._before(f"commit {spec.name}")
        self._infrastructure(spec)
        await self.inner.commit(spec)
        self._after(f"commit {spec.name}")

    async def rollback(self, spec: InstanceSpec) -> None:
        await self._before(f"rollback {spec.name}")
        self._infrastructure(spec)
        await self.inner.rollback(spec)
        self._after(f"rollback {spec.name}")

    async def notify(self, spec: InstanceSpec, tags: Mapping[str, str]) -> None:
        await self._before(f"notify {spec.name}")
        await self.inner.notify(spec, tags)
        self._after(f"notify {spec.name}")

    async def delete(self, spec: InstanceSpec, *, keep_data: bool = True) -> None:
        await self._before(f"delete {spec.name}")
        await self.inner.delete(spec, keep_data=keep_data)

    async def close(self) -> None:
        await self.inner.close()
