"""A scale set over zones on simulated hosts (HostRouter over memory drivers, real SQLite): a rolling upgrade goes
zone by zone, a batch never holding two zones' instances, unless enableCrossZoneUpgrade."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from overhaul.adapters.drivers.hosts import HostRouter, placed_hosts
from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.errors import Conflict
from overhaul.core.gallery import ImageDefinition
from overhaul.core.hosts import Host, parse_host, parse_host_group
from overhaul.core.rollout import HOST_UNREACHABLE, ActionKind, AttemptStatus
from overhaul.ports.driver import Driver, EngineUnavailable, InstanceState
from overhaul.ports.events import AttemptChanged
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import FAST, small, version


class Down(MemoryDriver):
    """A simulated host whose engine stops answering while ``down``."""

    down = False

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        if self.down:
            raise EngineUnavailable("connection refused")
        return await super().observe(scale_set)


HOSTS: dict[str, Down] = {}


async def simulated(host: Host) -> Driver:
    HOSTS[host.group] = Down(address=host.publish_address)
    return HOSTS[host.group]


@pytest.fixture
async def orchestrator(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    store = SqliteStore(tmp_path / "overhaul.db")
    router = HostRouter(MemoryDriver(), simulated, placed_hosts(store))
    made = Orchestrator(store, router, HealthMonitor(), settings=replace(FAST, host_outage_timeout=1.0))
    await made.start()
    await made.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
    await made.galleries.publish(version("1.0.0"))
    for zone in ("1", "2", "3"):
        body: dict[str, Any] = {"zones": [zone], "properties": {"platformFaultDomainCount": 1}}
        await made.host_groups.put(parse_host_group(body, name=f"z{zone}", resource_group="rg", subscription="s"))
        ours = {"engine": f"unix:///run/z{zone}.sock", "publishAddress": f"127.0.0.{int(zone) + 1}"}
        host = parse_host(
            {"properties": {"overhaul": ours}}, group=f"z{zone}", name="h", resource_group="rg", subscription="s"
        )
        await made.host_groups.put_host(host)
    yield made
    await made.close()
    await router.close()
    await store.close()


async def batches(orchestrator: Orchestrator, attempt_id: str) -> list[list[int]]:
    """The instances each batch reimaged, from the journal (a batch's reimages begin in one write)."""
    found: dict[float, list[int]] = {}
    for entry in await orchestrator.store.journal(attempt_id):
        if entry.action == ActionKind.REIMAGE.value and entry.phase == "begin":
            found.setdefault(entry.at, []).append(entry.instance_id)
    return [sorted(ids) for _, ids in sorted(found.items())]


@pytest.mark.parametrize("cross_zone", [False, True])
async def test_a_rollout_goes_zone_by_zone_unless_cross_zone(orchestrator: Orchestrator, cross_zone: bool) -> None:
    model = small(9)
    model["zones"] = ["1", "2", "3"]
    model["properties"]["upgradePolicy"] = {
        "mode": "Rolling",
        "rollingUpgradePolicy": {"maxBatchInstancePercent": 40, "enableCrossZoneUpgrade": cross_zone},
    }
    await orchestrator.scale_sets.put("web", model)
    zone_of = {
        i.instance_id: i.host.split("/hostGroups/z")[1][0] for i in await orchestrator.scale_sets.instances("web")
    }
    assert sorted(zone_of.values()) == ["1"] * 3 + ["2"] * 3 + ["3"] * 3
    await orchestrator.galleries.publish(version("2.0.0"))
    attempt = await orchestrator.upgrades.start("web")
    assert (await orchestrator.upgrades.wait(attempt.id, 20)).status is AttemptStatus.COMPLETED
    done = await batches(orchestrator, attempt.id)
    assert sorted(i for b in done for i in b) == list(range(9))
    assert all(len(b) <= 3 for b in done)  # 40 % of 9
    spans = [{zone_of[i] for i in b} for b in done]
    if cross_zone:
        assert any(len(zones) > 1 for zones in spans), done
    else:
        assert spans == [{"1"}, {"2"}, {"3"}], done


def zonal(capacity: int) -> dict[str, Any]:
    model = small(capacity)
    model["zones"] = ["1", "2", "3"]
    model["properties"]["upgradePolicy"] = {"mode": "Rolling", "rollingUpgradePolicy": {"maxBatchInstancePercent": 40}}
    return model


async def test_a_host_that_does_not_answer_holds_only_its_own_instances(orchestrator: Orchestrator) -> None:
    await orchestrator.scale_sets.put("web", zonal(6))
    HOSTS["z3"].down = True
    infos = {i.instance_id: i for i in await orchestrator.scale_sets.instances("web")}
    assert [i for i, info in infos.items() if info.view.unreachable] == [2, 5]
    assert "host z3/h does not answer" in infos[2].view.detail
    await orchestrator.galleries.publish(version("2.0.0"))
    attempt = await orchestrator.upgrades.start("web")  # 2 of 6 Unknown: not "too unhealthy to start"
    seen = await orchestrator.upgrades.wait(attempt.id, 20)
    assert seen.status is AttemptStatus.FAULTED and seen.error_code == HOST_UNREACHABLE, seen
    versions = {i: s.version for i, s in (await HOSTS["z1"].observe("web")).items()}
    versions |= {i: s.version for i, s in (await HOSTS["z2"].observe("web")).items()}
    assert versions == dict.fromkeys([0, 1, 3, 4], "2.0.0")
    HOSTS["z3"].down = False
    assert {i: s.version for i, s in (await HOSTS["z3"].observe("web")).items()} == {2: "1.0.0", 5: "1.0.0"}


async def test_a_host_back_before_the_outage_timeout_is_picked_up(orchestrator: Orchestrator) -> None:
    await orchestrator.scale_sets.put("web", zonal(6))
    HOSTS["z3"].down = True
    await orchestrator.galleries.publish(version("2.0.0"))
    waiting = asyncio.Event()

    def listen(event: object) -> None:
        if isinstance(event, AttemptChanged) and event.attempt.hosts_down_since is not None:
            waiting.set()

    orchestrator.events.subscribe(listen)
    attempt = await orchestrator.upgrades.start("web")
    await asyncio.wait_for(waiting.wait(), 20)
    causes = await orchestrator.upgrades.why("web")
    assert any(c.code == "HostUnreachable" and c.instances == (2, 5) for c in causes), causes
    HOSTS["z3"].down = False
    orchestrator.reconciler.wake(attempt.id)
    done = await orchestrator.upgrades.wait(attempt.id, 20)
    assert done.status is AttemptStatus.COMPLETED, done
    assert {i: s.version for i, s in (await HOSTS["z3"].observe("web")).items()} == {2: "2.0.0", 5: "2.0.0"}


async def test_an_instance_found_on_two_hosts_is_a_conflict_naming_both(orchestrator: Orchestrator) -> None:
    await orchestrator.scale_sets.put("web", zonal(3))
    infos = await orchestrator.scale_sets.instances("web")
    on_zone_1 = next(i for i in infos if "/hostGroups/z1/" in i.host)
    # The same instance shows up on zone 2's host too (an engine's storage copied by hand, say).
    HOSTS["z2"].instances.setdefault("web", {})[on_zone_1.instance_id] = (await HOSTS["z1"].observe("web"))[
        on_zone_1.instance_id
    ]
    await orchestrator.galleries.publish(version("2.0.0"))
    with pytest.raises(Conflict) as caught:
        await orchestrator.upgrades.start("web")
    assert caught.value.code == "InstanceOnTwoHosts"
    assert "/hostGroups/z1/hosts/h" in caught.value.message and "/hostGroups/z2/hosts/h" in caught.value.message


async def test_scaling_out_and_in_keeps_the_zones_within_one_instance_of_each_other(orchestrator: Orchestrator) -> None:
    """Instance ids are dense here: a scale-in removes the newest, which placement put in the emptiest zones when
    they came, so what is left stays balanced, as Azure's scale-in from the largest zone leaves it."""

    async def per_zone() -> list[int]:
        hosts = [i.host for i in await orchestrator.scale_sets.instances("web")]
        return [sum(f"/hostGroups/z{z}/" in h for h in hosts) for z in (1, 2, 3)]

    await orchestrator.scale_sets.put("web", zonal(4))
    for capacity in (8, 5, 9, 2, 7, 3):
        await orchestrator.scale_sets.put("web", {"sku": {"capacity": capacity}}, patch=True)
        counts = await per_zone()
        assert sum(counts) == capacity and max(counts) - min(counts) <= 1, (capacity, counts)
