"""The gallery's copies to hosts (runtime/replication.py) over simulated hosts (HostRouter over memory engines that
start with none of the gallery's images, real SQLite): publishing copies the image to every host of each target
location, 'latest' there waits for them, a cut copy fails naming the engine's words and is tried again, a host
added later catches up, and a batch waits for the image on its own host."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from overhaul.adapters.drivers.hosts import HostRouter, placed_hosts
from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.errors import InvalidInput
from overhaul.core.gallery import ImageDefinition, ImageVersion
from overhaul.core.hosts import Host, parse_host, parse_host_group
from overhaul.core.replication import ReplicaState
from overhaul.core.rollout import AttemptStatus
from overhaul.ports.driver import Driver
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import FAST, small, version


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fleet:
    def __init__(self, orchestrator: Orchestrator, engines: dict[str, MemoryDriver], clock: Clock) -> None:
        self.orchestrator, self.engines, self.clock = orchestrator, engines, clock

    async def add_host(self, name: str) -> None:
        body = {"properties": {"overhaul": {"engine": f"unix:///run/{name}.sock"}}}
        host = parse_host(body, group="edge", name=name, resource_group="rg", subscription="s")
        await self.orchestrator.host_groups.put_host(host)

    async def stored(self, number: str) -> ImageVersion:
        return next(v for v in await self.orchestrator.store.image_versions() if v.version == number)

    async def until(self, number: str, done: Callable[[ImageVersion], bool]) -> ImageVersion:
        """Waits (woken by each change) until the stored version is ``done``."""
        changes = self.orchestrator.changes
        async with asyncio.timeout(10):
            while True:
                seen = changes.version
                found = await self.stored(number)
                if done(found):
                    return found
                await changes.wait(seen, 1.0)


def states(found: ImageVersion) -> dict[str, str]:
    return {r.host.rsplit("/", 1)[-1]: r.state.value for r in found.replicas}


def edge(number: str) -> ImageVersion:
    return replace(version(number), target_locations=("local", "edge"))


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    store = SqliteStore(tmp_path / "overhaul.db")
    engines: dict[str, MemoryDriver] = {}

    async def simulated(host: Host) -> Driver:
        engines.setdefault(host.name, MemoryDriver(address=host.publish_address, images=set()))
        return engines[host.name]

    local = MemoryDriver()  # the gallery's engine: it has every image
    router = HostRouter(local, simulated, placed_hosts(store), source=local)
    clock = Clock()
    settings = replace(FAST, replication_retry=60.0, infra_deadline=30.0)
    made = Orchestrator(store, router, HealthMonitor(), clock=clock, settings=settings, image_copies=router)
    await made.start()
    await made.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
    body: dict[str, Any] = {"location": "edge", "properties": {"platformFaultDomainCount": 1}}
    await made.host_groups.put(parse_host_group(body, name="edge", resource_group="rg", subscription="s"))
    fleet = Fleet(made, engines, clock)
    for name in ("h1", "h2"):
        await fleet.add_host(name)
    replicating = asyncio.create_task(made.replicator.run())
    yield fleet
    replicating.cancel()
    await asyncio.gather(replicating, return_exceptions=True)
    await made.close()
    await router.close()
    await store.close()


async def test_publishing_copies_the_image_to_every_host_of_each_target_location(fleet: Fleet) -> None:
    o = fleet.orchestrator
    await o.galleries.publish(edge("1.0.0"))
    found = await fleet.until("1.0.0", lambda v: v.present_in("edge"))
    assert states(found) == {"h1": "Completed", "h2": "Completed"}
    assert all(e.images == {"localhost/tiny:1.0.0"} for e in fleet.engines.values())
    assert found.replication_json()["aggregatedState"] == "Completed"
    model = small(4)
    model["location"] = "edge"
    await o.scale_sets.put("web", model)
    assert {i.host.rsplit("/", 1)[-1] for i in await o.scale_sets.instances("web")} == {"h1", "h2"}
    # A version published only where there is no host needs no copy.
    await o.galleries.publish(version("1.0.1"))
    assert (await fleet.stored("1.0.1")).replicas == ()


async def test_a_cut_copy_fails_with_the_engines_words_latest_skips_it_there_until_a_retry_succeeds(
    fleet: Fleet,
) -> None:
    o = fleet.orchestrator
    await o.galleries.publish(edge("1.0.0"))
    await fleet.until("1.0.0", lambda v: v.present_in("edge"))
    fleet.engines["h2"].load_error = "no space left on device"
    await o.galleries.publish(edge("2.0.0"))
    failed = await fleet.until("2.0.0", lambda v: ReplicaState.FAILED.value in states(v).values())
    assert states(failed) == {"h1": "Completed", "h2": "Failed"}
    summary = failed.replication_json()["summary"]
    assert summary[1] == {
        "region": "edge",
        "state": "Failed",
        "details": "host edge/h2: load image localhost/tiny:2.0.0: no space left on device",
        "progress": 75,
    }
    model = small(2)
    model["location"] = "edge"
    await o.scale_sets.put("web", model)
    assert (await o.instances.resolve(await o.scale_sets.get("web"))).version == "1.0.0"  # 'latest' there
    assert (await o.instances.resolve(await o.scale_sets.get("web"), "1.0.0")).version == "1.0.0"
    with pytest.raises(InvalidInput, match=r"not available in edge yet \(replication: Failed\)"):
        await o.instances.resolve(await o.scale_sets.get("web"), "2.0.0")
    fleet.engines["h2"].load_error = None
    fleet.clock.now += 61  # the retry is due
    o.changes.bump()
    done = await fleet.until("2.0.0", lambda v: v.present_in("edge"))
    assert states(done) == {"h1": "Completed", "h2": "Completed"}
    assert (await o.instances.resolve(await o.scale_sets.get("web"))).version == "2.0.0"


async def test_a_host_added_later_catches_up_without_taking_the_version_away(fleet: Fleet) -> None:
    o = fleet.orchestrator
    await o.galleries.publish(edge("1.0.0"))
    await fleet.until("1.0.0", lambda v: v.present_in("edge"))
    await fleet.add_host("h3")
    found = await fleet.until("1.0.0", lambda v: "h3" in states(v))
    assert found.present_in("edge")  # meanwhile: still there
    caught_up = await fleet.until("1.0.0", lambda v: states(v).get("h3") == "Completed")
    assert [r.catch_up for r in caught_up.replicas] == [False, False, True]
    assert fleet.engines["h3"].images == {"localhost/tiny:1.0.0"}
    # Publishing the same image again keeps the copies; another image under that number starts over.
    await o.galleries.publish(edge("1.0.0"))
    assert states(await fleet.stored("1.0.0")) == {"h1": "Completed", "h2": "Completed", "h3": "Completed"}
    await o.host_groups.delete_host("edge", "h3")
    assert set(states(await fleet.stored("1.0.0"))) == {"h1", "h2"}


async def test_a_batch_on_a_host_without_the_image_waits_for_it_and_never_blames_the_version(fleet: Fleet) -> None:
    o = fleet.orchestrator
    await o.galleries.publish(edge("1.0.0"))
    await fleet.until("1.0.0", lambda v: v.present_in("edge"))
    model = small(2)
    model["location"] = "edge"
    await o.scale_sets.put("web", model)
    await o.galleries.publish(edge("2.0.0"))
    await fleet.until("2.0.0", lambda v: v.present_in("edge"))
    fleet.engines["h2"].images = {"localhost/tiny:1.0.0"}  # its copy lost (pruned on the host)
    attempt = await o.upgrades.start("web")
    await asyncio.sleep(0.3)
    assert fleet.engines["h2"].images == {"localhost/tiny:1.0.0"}
    running = await o.upgrades.find(attempt.id)
    assert running is not None and running.status is AttemptStatus.ROLLING_FORWARD
    assert [c.code for c in await o.upgrades.why("web")] == ["ImageUnavailable"]  # why it waits
    fleet.engines["h2"].images.add("localhost/tiny:2.0.0")
    assert (await o.upgrades.wait(attempt.id, 20)).status is AttemptStatus.COMPLETED
    assert not (await fleet.stored("2.0.0")).quarantined


async def test_a_location_with_no_host_is_refused_naming_the_field(fleet: Fleet) -> None:
    """'local' is this machine's engine; any other location needs a host (a scale set's, a version's region)."""
    o = fleet.orchestrator
    far = replace(version("1.0.0"), target_locations=("local", "edge", "mars"))
    with pytest.raises(InvalidInput, match="no host is in mars") as refused:
        await o.galleries.publish(far)
    assert refused.value.target == "properties.publishingProfile.targetRegions[2].name"
    assert await o.store.image_versions() == []  # nothing kept
    await o.galleries.publish(edge("1.0.0"))
    await fleet.until("1.0.0", lambda v: v.present_in("edge"))
    model = small(2)
    model["location"] = "mars"
    with pytest.raises(InvalidInput, match="no host is in mars") as refused:
        await o.scale_sets.put("web", model)
    assert refused.value.target == "location"
    assert await o.store.list_scale_sets() == []
    await o.scale_sets.put("web", small(2))  # 'local': this machine's engine, as always
