"""Triage over the in-memory driver, real SQLite and a simulated clock: infrastructure faults (the engine down for
ten minutes, a host port taken, an image missing then restored, an engine's leftover, an address its network
plugin still holds) cost no rollback and no quarantine; past rollout.infra_deadline the attempt ends naming the
fault, with every instance running and the version still eligible; image faults are still decided as before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.core.rollout import AttemptStatus, StartedBy, Step
from overhaul.core.triage import Blame, Fault, classify
from overhaul.ports.driver import DriverError, EngineUnavailable, InstanceSpec
from tests.builders import RETRY, SIMULATED, Failing, Fleet, SimulatedClock, fleet_with, version

SETTINGS = SIMULATED


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with fleet_with(tmp_path) as each:
        yield each


# The engines' own words for each fault, as Podman, Docker and CNI said them on this kind of machine.
ENGINE_MESSAGES = [
    (
        "start outage_0: cannot listen on the TCP port: listen tcp4 127.0.0.1:38901: bind: address already in use",
        Fault.HOST_PORT_TAKEN,
    ),
    ("Bind for 127.0.0.1:8080 failed: port is already allocated", Fault.HOST_PORT_TAKEN),
    (
        'start chaos_3: plugin type="bridge" failed (add): cni plugin bridge failed: failed to allocate for range 0: '
        "10.88.2.149 has been allocated to 084f, duplicate allocation is not allowed",
        Fault.NETWORK_ADDRESS_HELD,
    ),
    (
        "start outage_0: container 4f2a must be in Created or Stopped state to be started: container state improper",
        Fault.ENGINE_LEFTOVER,
    ),
    ('create web_1: the container name "web_1" is already in use by 9c1e', Fault.ENGINE_LEFTOVER),
    (  # Podman killed mid-removal: the container stays in its database, "Removing", with its storage gone
        'list containers of chaos: getting container from store "ef5587a23bd19dd38f804aabf06ede0f'
        '9767fe17d678f1aaa64ca8e40e267d89": container not known',
        Fault.ENGINE_LEFTOVER,
    ),
    ("create web_1 from localhost/app:2: no such image localhost/app:2 in the engine", Fault.IMAGE_UNAVAILABLE),
    ("create web_1: layer not known", Fault.IMAGE_UNAVAILABLE),
    ("write /var/lib/containers/storage/overlay/x: no space left on device", Fault.DISK_FULL),
    ("list containers of web: engine unreachable: Cannot connect to unix socket", Fault.ENGINE_UNAVAILABLE),
    (  # Podman's copier ended before reading the whole request (containers/buildah#6573): its plumbing, no image's
        "copy the config drive into spread_3: passing bulk input to subprocess: write |1: broken pipe",
        Fault.ENGINE_UNAVAILABLE,
    ),
    ("start web_0: crun: executable file `/app` not found in $PATH: No such file or directory", Fault.IMAGE_FAILED),
    ("create web_0: invalid reference format", Fault.IMAGE_FAILED),
]


@pytest.mark.parametrize(("message", "fault"), ENGINE_MESSAGES)
def test_each_engine_message_is_blamed_on_what_failed(message: str, fault: Fault) -> None:
    assert classify(message) is fault
    assert DriverError(message).fault is fault
    assert DriverError(message).transient is (fault.blame is Blame.INFRASTRUCTURE)


def test_an_unreachable_engine_is_the_infrastructure_whatever_it_says() -> None:
    assert EngineUnavailable("inspect web_0: boom").fault is Fault.ENGINE_UNAVAILABLE


def outage(clock: SimulatedClock, seconds: float, only: str | None = None) -> Failing:
    """The engine down for ``seconds`` (simulated) from the first reimage on: every call (or every ``only`` call)
    fails."""
    began: list[float] = []

    def failing(call: str, spec: InstanceSpec | None) -> DriverError | None:
        if call == "reimage" and not began:
            began.append(clock.now)
        if began and (only is None or call == only) and clock.now < began[0] + seconds:
            return EngineUnavailable(f"{call}: engine unreachable: connection refused")
        return None

    return failing


def on_instance(instance_id: int, message: str, times: int) -> Failing:
    """The first ``times`` reimages of one instance fail with the engine's ``message``."""
    left = [times]

    def failing(call: str, spec: InstanceSpec | None) -> DriverError | None:
        if call == "reimage" and spec is not None and spec.instance_id == instance_id and left[0] > 0:
            left[0] -= 1
            return DriverError(message)
        return None

    return failing


async def test_a_ten_minute_engine_outage_mid_rollout_costs_nothing(tmp_path: Path) -> None:
    """The outage (600 simulated seconds) is shorter than the deadline this fleet sets (15 minutes)."""
    async with fleet_with(tmp_path, replace(SETTINGS, infra_deadline=900.0)) as fleet:
        began = fleet.clock.now
        fleet.driver.failing = outage(fleet.clock, 600.0)
        done = await fleet.upgrade()
        assert done.status is AttemptStatus.COMPLETED, done.error_message
        assert fleet.driver.failures >= 600 / RETRY  # it did meet the whole outage
        assert done.end_time is not None and done.end_time - (began + 600.0) <= RETRY  # within one retry of clearing
        assert fleet.rollbacks() == 0 and done.failed == 0
        assert not await fleet.quarantined("2.0.0")
        assert set((await fleet.versions()).values()) == {"2.0.0"}


@pytest.mark.parametrize(
    ("message", "times"),
    [
        ("start web_1: cannot listen on the TCP port: listen tcp4 127.0.0.1:38901: bind: address already in use", 1),
        ("start web_1: container 4f2a must be in Created or Stopped state to be started: container state improper", 3),
        (
            "start web_1: cni plugin bridge failed: 10.88.2.149 has been allocated to 084f, duplicate allocation is "
            "not allowed",
            2,
        ),
        ("write /var/lib/containers/storage: no space left on device", 2),
    ],
    ids=["port-taken", "engine-leftover", "address-held", "disk-full"],
)
async def test_an_infrastructure_fault_on_one_instance_is_retried_not_blamed(
    fleet: Fleet, message: str, times: int
) -> None:
    fleet.driver.failing = on_instance(1, message, times)
    done = await fleet.upgrade()
    assert done.status is AttemptStatus.COMPLETED, done.error_message
    assert fleet.driver.failures == times
    assert fleet.rollbacks() == 0 and done.failed == 0
    assert not await fleet.quarantined("2.0.0")
    assert set((await fleet.versions()).values()) == {"2.0.0"}


async def test_a_taken_host_port_is_replaced_by_another(fleet: Fleet) -> None:
    before = (await fleet.store.instance_ports("web"))[1]
    fleet.driver.failing = on_instance(1, "start web_1: listen tcp4 127.0.0.1:1: bind: address already in use", 1)
    done = await fleet.upgrade()
    assert done.status is AttemptStatus.COMPLETED
    after = (await fleet.store.instance_ports("web"))[1]
    assert after != before and set(after) == set(before)
    states = await MemoryDriver.observe(fleet.driver, "web")
    assert dict(states[1].ports) == after  # published where the store says


async def test_an_image_removed_then_restored_is_waited_for(fleet: Fleet) -> None:
    """The image leaves the engine after the start's own check (at the first reimage), and is back 2 minutes
    later (simulated)."""
    image = version("2.0.0").container_image
    removed: list[float] = []

    def remove_then_restore(call: str, spec: InstanceSpec | None) -> DriverError | None:
        if call != "reimage":
            return None
        if not removed:
            removed.append(fleet.clock.now)
            fleet.driver.missing_images.add(image)
        elif fleet.clock.now >= removed[0] + 120:
            fleet.driver.missing_images.discard(image)
        if image in fleet.driver.missing_images:
            fleet.clock.now += RETRY  # the driver itself fails the call: no such image
        return None

    fleet.driver.failing = remove_then_restore
    done = await fleet.upgrade()
    assert done.status is AttemptStatus.COMPLETED, done.error_message
    assert fleet.rollbacks() == 0 and not await fleet.quarantined("2.0.0")
    assert set((await fleet.versions()).values()) == {"2.0.0"}


async def test_past_the_deadline_the_attempt_ends_naming_the_fault_and_blames_no_version(tmp_path: Path) -> None:
    """Reimages meet an engine that stays unreachable for 5 minutes (simulated), the deadline is 1 minute."""
    async with fleet_with(tmp_path, replace(SETTINGS, infra_deadline=60.0)) as fleet:
        began = fleet.clock.now
        fleet.driver.failing = outage(fleet.clock, 300.0, only="reimage")
        done = await fleet.upgrade()
        assert done.status is AttemptStatus.FAULTED
        assert done.error_code == "EngineUnavailable", done.error_message
        message = done.error_message or ""
        assert "rollout.infra_deadline" in message and "version stays eligible" in message, message
        assert "Next: bring the container engine" in message
        interrupted = [p for p in done.instances.values() if p.step is Step.INTERRUPTED]
        assert interrupted and all(p.fault is Fault.ENGINE_UNAVAILABLE for p in interrupted)
        assert done.failed == 0
        assert not await fleet.quarantined("2.0.0")
        # Every instance runs an OS disk: the one it had, where its reimage was interrupted.
        assert set((await fleet.versions()).values()) == {"1.0.0"}
        # 'latest' still means the version: the next attempt takes it once the engine is back.
        fleet.clock.now = began + 300
        again = await fleet.orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)
        assert again.target_version == "2.0.0"
        finished = await fleet.orchestrator.upgrades.wait(again.id, 60)
        assert finished.status is AttemptStatus.COMPLETED
        assert set((await fleet.versions()).values()) == {"2.0.0"}


async def test_image_faults_are_still_the_image_s(fleet: Fleet) -> None:
    """Its command cannot run (a reimage fails the image's way), or it exits by itself: rolled back, quarantined."""
    fleet.driver.fail_reimage = lambda spec: spec.instance_id == 0
    done = await fleet.upgrade()
    assert done.status is AttemptStatus.FAULTED and (done.error_code or "").startswith("MaxUnhealthy")
    assert done.instances[0].step is Step.ROLLED_BACK and done.instances[0].fault is None
    assert await fleet.quarantined("2.0.0")


async def test_an_image_whose_instances_exit_is_still_rolled_back_and_quarantined(fleet: Fleet) -> None:
    fleet.driver.exiting_images.add(version("2.0.0").container_image)
    done = await fleet.upgrade()
    assert done.status is AttemptStatus.FAULTED and done.failed >= 1
    assert all(p.fault is None for p in done.instances.values())
    assert await fleet.quarantined("2.0.0")
    assert set((await fleet.versions()).values()) == {"1.0.0"}
