"""Orchestrator benchmarks, measured in one run.

1. A 10,000-instance rolling upgrade through the in-memory driver with instant health, with real SQLite
   journaling: the orchestrator's own time per instance.
2. A real Podman rollout of 20 small containers in 20 % batches against the floor measured beside it: bare
   stop + create + start + first healthy answer for each instance, batch by batch, with the same images.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo import busybox_images as engine_images  # noqa: E402
from overhaul.adapters.drivers.engine import EngineDriver, EngineSettings  # noqa: E402
from overhaul.adapters.drivers.memory import MemoryDriver  # noqa: E402
from overhaul.adapters.health.monitor import HealthMonitor, HealthSettings  # noqa: E402
from overhaul.adapters.store.sqlite import SqliteStore  # noqa: E402
from overhaul.core.gallery import ImageDefinition, ImageVersion  # noqa: E402
from overhaul.core.rollout import AttemptStatus, StartedBy  # noqa: E402
from overhaul.localhost import free_port  # noqa: E402
from overhaul.runtime.orchestrator import Orchestrator  # noqa: E402

REPO = "localhost/overhaul-bench"
ROUNDS = 5


def model(capacity: int, *, probe: bool) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "storageProfile": {
            "imageReference": {"publisher": "overhaul", "offer": "bench", "sku": "tiny", "version": "latest"}
        },
        "overhaul": {"stopTimeoutInSeconds": 2},
    }
    if probe:
        profile["networkProfile"] = {"healthProbe": {"protocol": "Http", "port": 8080, "requestPath": "/health"}}
    return {
        "sku": {"capacity": capacity},
        "properties": {"upgradePolicy": {"mode": "Automatic"}, "virtualMachineProfile": profile},
    }


async def publish(orchestrator: Orchestrator, version: str, container_image: str) -> None:
    await orchestrator.galleries.publish(ImageVersion("g", "tiny", version, container_image, published_at=time.time()))


async def fake_rollout(work: Path, capacity: int = 10_000) -> None:
    store = SqliteStore(work / "fake.db")
    driver = MemoryDriver()
    orchestrator = Orchestrator(store, driver, HealthMonitor())
    await orchestrator.start()
    await orchestrator.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "bench", "tiny"))
    await publish(orchestrator, "1.0.0", "fake:1")
    await orchestrator.scale_sets.put("big", model(capacity, probe=False))
    await publish(orchestrator, "2.0.0", "fake:2")
    wall, cpu = time.perf_counter(), time.process_time()
    attempt = await orchestrator.upgrades.start("big", started_by=StartedBy.PLATFORM)
    done = await orchestrator.upgrades.wait(attempt.id, 3600)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    journal_rows = store.db.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
    await orchestrator.close()
    await store.close()
    assert done.status is AttemptStatus.COMPLETED and done.successful == capacity
    print(f"\n{capacity:,}-instance rolling upgrade, in-memory driver, instant health, SQLite journal")
    print(f"{'measure':<44}{'value':>12}  target")
    print(f"{'batches':<44}{done.batches_started:>12}")
    print(f"{'journal rows written':<44}{journal_rows:>12,}")
    print(f"{'wall time (s)':<44}{wall:>12.2f}")
    print(f"{'orchestrator wall time per instance (ms)':<44}{wall / capacity * 1000:>12.3f}  <= 1")
    print(f"{'orchestrator CPU time per instance (ms)':<44}{cpu / capacity * 1000:>12.3f}")


async def first_healthy(http: aiohttp.ClientSession, port: int) -> None:
    url = f"http://127.0.0.1:{port}/health"
    while True:
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200:
                    return
        except (aiohttp.ClientError, OSError, TimeoutError):
            pass
        await asyncio.sleep(0.01)  # the floor: a probe as tight as it can be


def container_config(image: str, port: int) -> dict[str, Any]:
    return {
        "Image": image,
        "StopTimeout": 2,
        "ExposedPorts": {"8080/tcp": {}},
        "HostConfig": {
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]},
            "Ulimits": [u.to_api() for u in EngineSettings().ulimits],
            # As overhaul's instances are by default (overhaul.network isolated): a network stack of their own.
            "NetworkMode": "slirp4netns",
        },
    }


async def floor_rollout(docker: aiodocker.Docker, http: aiohttp.ClientSession, count: int, batch: int) -> float:
    """Bare engine calls: per instance stop the old container, create and start the new one, first 200."""
    ports: list[int] = []
    for _ in range(count):
        ports.append(free_port(ports))
    for i, port in enumerate(ports):
        old = await docker.containers.create(container_config(f"{REPO}:1.0.0", port), name=f"floor_{i}")
        await old.start()
    await asyncio.gather(*(first_healthy(http, p) for p in ports))

    async def replace_one(i: int) -> None:
        await docker.containers.container(f"floor_{i}").stop(t=2)
        new = await docker.containers.create(container_config(f"{REPO}:2.0.0", ports[i]), name=f"floor_{i}_new")
        await new.start()
        await first_healthy(http, ports[i])

    total = 0.0
    for start in range(0, count, batch):
        began = time.perf_counter()
        await asyncio.gather(*(replace_one(i) for i in range(start, min(count, start + batch))))
        total += time.perf_counter() - began
    for i in range(count):
        for name in (f"floor_{i}", f"floor_{i}_new"):
            await docker.containers.container(name).delete(force=True)
    return total


async def real_rollout(driver: EngineDriver, work: Path, count: int, round_no: int) -> float:
    store = SqliteStore(work / f"real-{round_no}.db")
    orchestrator = Orchestrator(store, driver, HealthMonitor(HealthSettings(probe_timeout=1.0)))
    await orchestrator.start()
    await orchestrator.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "bench", "tiny"))
    await publish(orchestrator, "1.0.0", f"{REPO}:1.0.0")
    name = f"bench{round_no}"
    await orchestrator.scale_sets.put(name, model(count, probe=True))
    async with asyncio.timeout(60):
        while True:
            seen = orchestrator.health.version
            if all(i.view.healthy for i in await orchestrator.scale_sets.instances(name)):
                break
            await orchestrator.health.wait_changed(seen, 5.0)
    await publish(orchestrator, "2.0.0", f"{REPO}:2.0.0")
    attempt = await orchestrator.upgrades.start(name, started_by=StartedBy.PLATFORM)
    done = await orchestrator.upgrades.wait(attempt.id, 600)
    assert done.status is AttemptStatus.COMPLETED, done.error_message
    assert done.end_time is not None
    makespan = done.end_time - done.start_time
    await orchestrator.scale_sets.delete(name)
    await orchestrator.close()
    await store.close()
    return makespan


async def podman_rollout(work: Path, count: int = 20) -> None:
    for version in ("1.0.0", "2.0.0"):
        engine_images.build("podman", f"{REPO}:{version}", version)
    driver = EngineDriver(EngineSettings(config_root=work / "config"))
    await driver.start()  # a private podman system orchestrator
    for leftover in await driver.docker.containers.list(all=True):  # from an interrupted earlier run
        name = str((leftover._container.get("Names") or [""])[0]).lstrip("/")
        if name.startswith(("bench", "floor_")):
            await leftover.delete(force=True)
    batch = max(1, count * 20 // 100)
    floors: list[float] = []
    ours: list[float] = []
    try:
        async with aiohttp.ClientSession() as http:
            for round_no in range(ROUNDS):
                floors.append(await floor_rollout(driver.docker, http, count, batch))
                ours.append(await real_rollout(driver, work, count, round_no))
    finally:
        await driver.close()
    floor, makespan = statistics.median(floors), statistics.median(ours)
    print(
        f"\nreal Podman rollout, {count} busybox containers, batches of {batch} ({ROUNDS} alternating rounds, medians)"
    )
    print(f"{'measure':<56}{'seconds':>10}")
    print(f"{'floor: bare stop+create+start+first 200, summed per batch':<56}{floor:>10.2f}")
    print(f"{'overhaul rolling upgrade makespan':<56}{makespan:>10.2f}")
    ratio = makespan / floor
    print(f"makespan / floor: {ratio:.2f} (target <= 1.25) {'OK' if ratio <= 1.25 else 'MISSED'}")
    print(f"rounds: floor {', '.join(f'{f:.2f}' for f in floors)}; overhaul {', '.join(f'{m:.2f}' for m in ours)}")


async def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="overhaul-bench-"))
    await fake_rollout(work)
    await podman_rollout(work)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
