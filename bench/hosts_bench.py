"""Many hosts, measured side by side in one run (in-memory drivers, instant health, real SQLite):

1. A 10,000-instance rolling upgrade on the orchestrator's own engine, then the same over 100 simulated hosts in 5
   zones behind HostRouter (zone by zone): the orchestrator's time per instance on each, and their ratio.
2. The 100-host rollout again with one host of the last zone lost once the second batch starts: every other
   host's instances upgraded, the lost host's left as they were, the attempt ended HostUnreachable.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from overhaul.adapters.drivers.hosts import HostRouter, placed_hosts  # noqa: E402
from overhaul.adapters.drivers.memory import MemoryDriver  # noqa: E402
from overhaul.adapters.health.monitor import HealthMonitor  # noqa: E402
from overhaul.adapters.store.sqlite import SqliteStore  # noqa: E402
from overhaul.core.gallery import ImageDefinition, ImageVersion  # noqa: E402
from overhaul.core.hosts import Host, parse_host, parse_host_group  # noqa: E402
from overhaul.core.rollout import AttemptStatus, StartedBy  # noqa: E402
from overhaul.ports.driver import Driver, EngineUnavailable, InstanceState  # noqa: E402
from overhaul.ports.events import AttemptChanged  # noqa: E402
from overhaul.runtime.orchestrator import Orchestrator  # noqa: E402
from overhaul.runtime.settings import RuntimeSettings  # noqa: E402

CAPACITY = 10_000
HOSTS, ZONES = 100, 5


class SimulatedHost(MemoryDriver):
    lost = False

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        if self.lost:
            raise EngineUnavailable("connection refused (host lost)")
        return await super().observe(scale_set)


def model(capacity: int, zones: list[str]) -> dict[str, Any]:
    profile = {"storageProfile": {"imageReference": {"publisher": "o", "offer": "b", "sku": "t", "version": "latest"}}}
    doc: dict[str, Any] = {
        "sku": {"capacity": capacity},
        "properties": {"upgradePolicy": {"mode": "Automatic"}, "virtualMachineProfile": profile},
    }
    if zones:
        doc["zones"] = zones
    return doc


async def rollout(work: Path, name: str, *, hosts: int, lose_one: bool = False) -> tuple[float, Any, dict[str, Any]]:
    store = SqliteStore(work / f"{name}.db")
    simulated: dict[str, SimulatedHost] = {}

    async def make(host: Host) -> Driver:
        simulated[host.name] = SimulatedHost(address=host.publish_address)
        return simulated[host.name]

    driver: Driver = HostRouter(MemoryDriver(), make, placed_hosts(store)) if hosts else MemoryDriver()
    settings = replace(RuntimeSettings(), host_outage_timeout=1.0)
    orchestrator = Orchestrator(store, driver, HealthMonitor(), settings=settings)
    await orchestrator.start()
    await orchestrator.galleries.put_definition(ImageDefinition("g", "t", "o", "b", "t"))
    await orchestrator.galleries.publish(ImageVersion("g", "t", "1.0.0", "fake:1", published_at=1.0))
    zones = [str(z) for z in range(1, ZONES + 1)] if hosts else []
    for z in zones:
        group = parse_host_group(
            {"zones": [z], "properties": {"platformFaultDomainCount": 1}},
            name=f"z{z}",
            resource_group="rg",
            subscription="s",
        )
        await orchestrator.host_groups.put(group)
    for h in range(hosts):
        ours = {"engine": f"unix:///run/h{h}.sock", "publishAddress": f"127.0.{h // 250}.{h % 250 + 2}"}
        body = {"properties": {"overhaul": ours}}
        host = parse_host(body, group=f"z{h % ZONES + 1}", name=f"h{h}", resource_group="rg", subscription="s")
        await orchestrator.host_groups.put_host(host)
    await orchestrator.scale_sets.put("big", model(CAPACITY, zones))
    await orchestrator.galleries.publish(ImageVersion("g", "t", "2.0.0", "fake:2", published_at=2.0))
    if lose_one:

        def lose(event: object) -> None:
            if isinstance(event, AttemptChanged) and event.attempt.batches_started >= 2:
                simulated["h4"].lost = True

        orchestrator.events.subscribe(lose)
    wall = time.perf_counter()
    attempt = await orchestrator.upgrades.start("big", started_by=StartedBy.PLATFORM)
    done = await orchestrator.upgrades.wait(attempt.id, 3600)
    wall = time.perf_counter() - wall
    facts: dict[str, Any] = {}
    if lose_one:
        simulated["h4"].lost = False
        on_lost = await simulated["h4"].observe("big")
        elsewhere = [s for n, d in simulated.items() if n != "h4" for s in (await d.observe("big")).values()]
        facts = {
            "lost host's instances left as they were": sum(s.version == "1.0.0" for s in on_lost.values()),
            "lost host's instances": len(on_lost),
            "other hosts' instances upgraded": sum(s.version == "2.0.0" for s in elsewhere),
            "other hosts' instances": len(elsewhere),
        }
    await orchestrator.close()
    await driver.close()
    await store.close()
    return wall, done, facts


async def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="overhaul-hosts-bench-"))
    one, one_done, _ = await rollout(work, "one", hosts=0)
    many, many_done, _ = await rollout(work, "many", hosts=HOSTS)
    assert one_done.status is AttemptStatus.COMPLETED and many_done.status is AttemptStatus.COMPLETED
    _, lost_done, facts = await rollout(work, "lost", hosts=HOSTS, lose_one=True)
    print(
        f"\n{CAPACITY:,}-instance rolling upgrade (20 % batches, instant health, SQLite): one engine vs {HOSTS} hosts"
    )
    print(f"{'measure':<52}{'value':>12}  target")
    print(f"{'one engine: time per instance (ms)':<52}{one / CAPACITY * 1000:>12.3f}")
    print(f"{f'{HOSTS} hosts in {ZONES} zones: time per instance (ms)':<52}{many / CAPACITY * 1000:>12.3f}")
    print(f"{'ratio (hosts / one engine)':<52}{many / one:>12.2f}  <= 1.5")
    print(
        f"{'batches (one engine / hosts, zone by zone)':<52}"
        f"{one_done.batches_started:>6} /{many_done.batches_started:>4}"
    )
    print(
        f"\nOne host of {HOSTS} lost mid-rollout (zone 5, at batch 2): "
        f"ended {lost_done.status.value} ({lost_done.error_code})"
    )
    for what, value in facts.items():
        print(f"{what:<52}{value:>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
