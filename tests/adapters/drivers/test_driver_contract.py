"""The Driver port's contract, the same assertions over every driver: the in-memory one, the same under the fault
injector (a call may fail before or after it took effect, and is then tried again, as the reconciler does),
Podman through the engine API, and QEMU. Each step, repeated as after a crash, ends where one would have.

A new driver joins with one entry in KITS."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo import busybox_images
from demo.fleet_model import health_extension
from overhaul.adapters.drivers.engine import EngineDriver, EngineSettings
from overhaul.adapters.drivers.faults import FaultPlan, FaultyDriver
from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.drivers.qemu import QemuDriver, QemuSettings
from overhaul.core.model import Accel, VmOptions
from overhaul.core.naming import data_disk_name
from overhaul.ports.driver import Driver, EngineUnavailable, InstanceSpec, InstanceState
from tests.engines import podman_service

REPO = "localhost/overhaul-contract"
VM_BOOT_TIMEOUT = 300  # TCG on 2 cores: 30-50 s, with room for a loaded machine
VERSIONS = ("1.0.0", "2.0.0")


@dataclass
class Kit:
    """A driver under test and what its instances are made from."""

    driver: Driver
    source: Callable[[str], str]  # version -> image reference or VM artefact directory
    # The platform notices (tags) the instance's running OS disk sees, read where that driver puts them.
    notices: Callable[[InstanceSpec], Awaitable[dict[str, str]]]
    vm: VmOptions | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # beside instanceId and scaleSet
    ports: dict[tuple[str, int], dict[int, int]] = field(default_factory=dict)

    async def spec(
        self, scale_set: str, version: str, instance_id: int = 0, *, data: bool = True, **changes: Any
    ) -> InstanceSpec:
        """The spec the runtime would give: the instance keeps its host ports, which its driver picked; a surged
        disk gets new ones."""
        key = (scale_set, instance_id)
        if changes.get("surge") or key not in self.ports:
            taken = {port for ports in self.ports.values() for port in ports.values()}
            app = await self.driver.host_port(taken)
            agent = await self.driver.host_port(taken | {app})
            self.ports[key] = {8080: app, 8090: agent}
        return InstanceSpec(
            scale_set=scale_set,
            instance_id=instance_id,
            image=self.source(version),
            version=version,
            ports=self.ports[key],
            volumes=((data_disk_name(scale_set, instance_id, 0), "/datadisks/lun0"),) if data else (),
            metadata={"instanceId": str(instance_id), "scaleSet": scale_set, **self.metadata},
            stop_timeout=1,
            vm=self.vm,
            **changes,
        )

    async def twice(self, step: Callable[[InstanceSpec], Awaitable[None]], spec: InstanceSpec) -> None:
        """The step, then the step again (as after a crash that lost its outcome); a transient error is tried
        again, as the reconciler does."""
        for _ in range(2):
            for _ in range(50):
                try:
                    await step(spec)
                    break
                except EngineUnavailable:
                    continue
            else:
                raise AssertionError(f"{step.__name__} stayed unavailable")

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        for _ in range(50):
            try:
                return await self.driver.observe(scale_set)
            except EngineUnavailable:
                continue
        raise AssertionError("observe stayed unavailable")

    async def state(self, scale_set: str, instance_id: int = 0) -> InstanceState:
        return (await self.observe(scale_set))[instance_id]


def memory_notices(driver: MemoryDriver) -> Callable[[InstanceSpec], Awaitable[dict[str, str]]]:
    async def read(spec: InstanceSpec) -> dict[str, str]:
        return dict(driver.tags.get((spec.scale_set, spec.instance_id), {}))

    return read


@asynccontextmanager
async def memory_kit(tmp_path: Path) -> AsyncIterator[Kit]:
    driver = MemoryDriver()
    yield Kit(driver, lambda v: f"{REPO}:{v}", memory_notices(driver))


@asynccontextmanager
async def faulty_kit(tmp_path: Path) -> AsyncIterator[Kit]:
    # Half the calls fail, half of those after they took effect: every step meets an interruption.
    plan = FaultPlan(transient=0.5, permanent_reimage=0.0, latency=0.0)
    inner = MemoryDriver()
    yield Kit(FaultyDriver(inner, random.Random(7), plan), lambda v: f"{REPO}:{v}", memory_notices(inner))


@pytest.fixture(scope="module")
def podman_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Podman service for the module, with the busybox versions imported."""
    for version in VERSIONS:
        busybox_images.build("podman", f"{REPO}:{version}", version)
    with podman_service(tmp_path_factory.mktemp("podman")) as url:
        yield url


def podman_kit(url: str) -> Callable[[Path], AbstractAsyncContextManager[Kit]]:
    @asynccontextmanager
    async def made(tmp_path: Path) -> AsyncIterator[Kit]:
        driver = EngineDriver(EngineSettings(url=url, config_root=tmp_path / "config"))

        async def notices(spec: InstanceSpec) -> dict[str, str]:
            """The config drive the running container mounts (its OS disk's directory)."""
            notice = tmp_path / "config" / spec.scale_set / str(spec.instance_id) / spec.disk / "platform.json"
            return dict(json.loads(notice.read_text())["tags"]) if notice.exists() else {}

        await driver.start()
        try:
            yield Kit(driver, lambda v: f"{REPO}:{v}", notices)
        finally:
            await driver.close()

    return made


@asynccontextmanager
async def qemu_kit(tmp_path: Path) -> AsyncIterator[Kit]:
    from demo import os_image  # noqa: PLC0415 (the VM artefacts are built only where QEMU is tested)

    artefacts = {v: os_image.build_vm(v, bad=False) for v in VERSIONS}
    driver = QemuDriver(QemuSettings(root=tmp_path / "vms", notice_timeout=VM_BOOT_TIMEOUT))

    async def notices(spec: InstanceSpec) -> dict[str, str]:
        """What the agent inside the running VM serves as IMDS's tags (once it has booted)."""
        port = (await driver.observe(spec.scale_set))[spec.instance_id].ports[8090]
        url = f"http://127.0.0.1:{port}/metadata/instance/compute/tagsList"
        async with asyncio.timeout(VM_BOOT_TIMEOUT), aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                        if resp.status == 200:
                            return {t["name"]: t["value"] for t in await resp.json()}
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(1)  # a booting VM has nothing to wait on but time

    try:
        # The agent inside serves notices once its Application Health extension configures it, as in a scale set.
        health = {"protocol": "http", "port": 8080, "requestPath": "/health", "intervalInSeconds": 5}
        extensions = {"extensions": [health_extension(health)]}
        vm = VmOptions(memory_mb=256, vcpus=1, accel=Accel.TCG)
        yield Kit(driver, lambda v: str(artefacts[v]), notices, vm=vm, metadata={"extensionProfile": extensions})
    finally:
        await driver.close()


KITS: dict[str, Callable[[pytest.FixtureRequest], Callable[[Path], AbstractAsyncContextManager[Kit]]]] = {
    "memory": lambda _: memory_kit,
    "faults": lambda _: faulty_kit,
    "podman": lambda request: podman_kit(request.getfixturevalue("podman_url")),
    "qemu": lambda _: qemu_kit,
}
# The real ones need an engine (`make check` leaves them out); QEMU's may first build the VM artefacts (minutes).
MARKS: dict[str, list[pytest.MarkDecorator]] = {
    "podman": [pytest.mark.engine, pytest.mark.slow],
    "qemu": [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(1800)],
}


@pytest.fixture(params=[pytest.param(name, marks=MARKS.get(name, [])) for name in KITS])
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kit]:
    if request.param == "qemu" and shutil.which("qemu-system-x86_64") is None:
        pytest.fail("QEMU is not installed: make machine installs it")
    async with KITS[request.param](request)(tmp_path) as made:
        yield made


async def remove(kit: Kit, *specs: InstanceSpec) -> None:
    for spec in specs:
        await kit.twice(lambda s: kit.driver.delete(s, keep_data=False), spec)


async def test_each_step_repeated_ends_where_one_would(kit: Kit) -> None:
    v1, v2 = await kit.spec("cx", "1.0.0"), await kit.spec("cx", "2.0.0")
    try:
        await kit.twice(kit.driver.ensure_running, v1)
        state = await kit.state("cx")
        assert (state.version, state.running, state.previous) == ("1.0.0", True, None)

        await kit.twice(kit.driver.reimage, v2)
        state = await kit.state("cx")
        assert state.version == "2.0.0" and state.running
        assert state.previous is not None and state.previous.version == "1.0.0" and not state.previous.running

        await kit.twice(kit.driver.rollback, v2)
        state = await kit.state("cx")
        assert (state.version, state.running, state.previous) == ("1.0.0", True, None)

        await kit.twice(kit.driver.reimage, v2)
        await kit.twice(kit.driver.commit, v2)
        state = await kit.state("cx")
        assert (state.version, state.running, state.previous) == ("2.0.0", True, None)

        # A reimage onto the same version with a new OS disk name (Azure's reimage) makes a fresh disk.
        again = replace(v2, os_disk="2.0.0+again")
        await kit.twice(kit.driver.reimage, again)
        state = await kit.state("cx")
        assert state.version == "2.0.0" and state.running and state.previous is not None
        await kit.twice(kit.driver.commit, again)
        assert (await kit.state("cx")).previous is None
    finally:
        await remove(kit, v1)
    assert await kit.observe("cx") == {}


async def test_a_previous_os_disk_left_by_an_interrupted_attempt_does_not_block_the_next_reimage(kit: Kit) -> None:
    v1, v2 = await kit.spec("cy", "1.0.0"), await kit.spec("cy", "2.0.0")
    try:
        await kit.twice(kit.driver.ensure_running, v1)
        await kit.twice(kit.driver.reimage, v2)  # never committed nor rolled back
        await kit.twice(kit.driver.reimage, v1)
        state = await kit.state("cy")
        assert state.version == "1.0.0" and state.running
        assert state.previous is not None and state.previous.version == "2.0.0"
        await kit.twice(kit.driver.commit, v1)
        assert (await kit.state("cy")).previous is None
    finally:
        await remove(kit, v1)


async def test_a_surged_os_disk_runs_beside_the_old_one_until_the_commit_or_rollback(kit: Kit) -> None:
    v1 = await kit.spec("cz", "1.0.0", data=False)
    try:
        await kit.twice(kit.driver.ensure_running, v1)
        old_ports = (await kit.state("cz")).ports
        surged = await kit.spec("cz", "2.0.0", data=False, surge=True)
        await kit.twice(kit.driver.reimage, surged)
        state = await kit.state("cz")
        assert state.version == "2.0.0" and state.running and state.ports == surged.ports
        assert state.previous is not None and state.previous.version == "1.0.0" and state.previous.running
        assert set(old_ports.values()).isdisjoint(surged.ports.values())
        await kit.twice(kit.driver.commit, surged)
        state = await kit.state("cz")
        assert (state.version, state.running, state.previous) == ("2.0.0", True, None)

        back = await kit.spec("cz", "1.0.0", data=False, surge=True)
        await kit.twice(kit.driver.reimage, back)
        await kit.twice(kit.driver.rollback, back)  # the surged disk goes; the running one never stopped
        state = await kit.state("cz")
        assert (state.version, state.running, state.previous) == ("2.0.0", True, None)
    finally:
        await remove(kit, v1)


async def test_observe_keeps_scale_sets_apart(kit: Kit) -> None:
    """A scale set named like another's instance (``cw`` and ``cw_0``) never sees the other's."""
    mine, other = await kit.spec("cw", "1.0.0"), await kit.spec("cw_0", "1.0.0")
    try:
        await kit.twice(kit.driver.ensure_running, mine)
        await kit.twice(kit.driver.ensure_running, other)
        assert set(await kit.observe("cw")) == {0} and set(await kit.observe("cw_0")) == {0}
        await remove(kit, other)
        assert set(await kit.observe("cw")) == {0} and await kit.observe("cw_0") == {}
    finally:
        await remove(kit, mine, other)


async def test_a_notice_reaches_the_running_os_disk_and_a_rollback_or_a_new_disk_ends_it(kit: Kit) -> None:
    """osRollingUpgradeDeferral's notice (Platform.PendingOSUpgrade): told twice, withdrawn twice; the upgrade
    rolled back (a surged disk beside the told one) leaves no notice; a reimage makes a disk that heard nothing."""
    v1 = await kit.spec("cn", "1.0.0", data=False)
    pending = {"Platform.PendingOSUpgrade": "2.0.0"}
    try:
        await kit.twice(kit.driver.ensure_running, v1)
        await kit.twice(lambda s: kit.driver.notify(s, pending), v1)
        assert await kit.notices(v1) == pending
        await kit.twice(lambda s: kit.driver.notify(s, {}), v1)
        assert await kit.notices(v1) == {}

        await kit.twice(lambda s: kit.driver.notify(s, pending), v1)
        surged = await kit.spec("cn", "2.0.0", data=False, surge=True)
        await kit.twice(kit.driver.reimage, surged)
        await kit.twice(kit.driver.rollback, surged)
        assert await kit.notices(v1) == {}  # the told disk served on; its upgrade is over

        await kit.twice(lambda s: kit.driver.notify(s, pending), v1)
        v2 = await kit.spec("cn", "2.0.0", data=False)
        await kit.twice(kit.driver.reimage, v2)
        assert await kit.notices(v2) == {}
    finally:
        await remove(kit, v1)


async def test_a_host_port_is_free_and_none_an_instance_holds(kit: Kit) -> None:
    """The host ports an instance publishes come from the driver of the host it runs on: never one the store says
    another instance holds, and one nothing listens on now."""
    taken: set[int] = set()
    for _ in range(5):
        port = await kit.driver.host_port(taken)
        assert port not in taken
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # nothing holds it
        taken.add(port)
