"""A scale set over zones on simulated hosts (HostRouter over memory drivers, real SQLite): a rolling upgrade goes
zone by zone, a batch never holding two zones' instances, unless enableCrossZoneUpgrade."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from overhaul.adapters.drivers.hosts import HostRouter, memory_drivers, placed_hosts
from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.gallery import ImageDefinition
from overhaul.core.hosts import parse_host, parse_host_group
from overhaul.core.rollout import ActionKind, AttemptStatus
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import FAST, small, version


@pytest.fixture
async def orchestrator(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    store = SqliteStore(tmp_path / "overhaul.db")
    router = HostRouter(MemoryDriver(), memory_drivers(), placed_hosts(store))
    made = Orchestrator(store, router, HealthMonitor(), settings=FAST)
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
