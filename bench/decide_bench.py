"""How soon a bad version is rolled back: from an instance's reimage to the rollback decision.

Real system containers on Podman with the agent inside at its default settings (http probe, intervalInSeconds 5,
numberOfProbes 1, so gracePeriod 5 s) and an instanceHealthTimeout of 5 minutes, which must not be what decides:
- "answers Unhealthy": the application answers, Unhealthy; the agent commits that at its first probe;
- "never answers": the application listens elsewhere; the agent commits Unknown when its grace period ends;
- "exits by itself": the OS stops a second after it starts; the engine says so (the agent never answers).
Target: decision <= grace period + one probe interval + 1 s after the reimage ended.
"""

from __future__ import annotations

import asyncio
import copy
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo import os_image  # noqa: E402
from demo.fleet_model import os_fleet_model  # noqa: E402
from overhaul.adapters.drivers.engine import EngineDriver, EngineSettings  # noqa: E402
from overhaul.adapters.health.monitor import HealthMonitor  # noqa: E402
from overhaul.adapters.store.sqlite import SqliteStore  # noqa: E402
from overhaul.core.gallery import ImageDefinition, ImageVersion  # noqa: E402
from overhaul.core.rollout import ActionKind, AttemptStatus, StartedBy, Step  # noqa: E402
from overhaul.ports.events import ActionFinished, AttemptChanged, Event  # noqa: E402
from overhaul.runtime.orchestrator import Orchestrator  # noqa: E402

ROUNDS = 3
GRACE, INTERVAL = 5.0, 5.0  # the agent's defaults for an http probe
TARGET = GRACE + INTERVAL + 1.0
NAME = "decidebench"
KINDS = {
    "answers Unhealthy": ("3.1.0", {"bad": True}),
    "never answers": ("3.2.0", {"silent": True}),
    "exits by itself": ("3.3.0", {"exits": True}),
}


def bench_model() -> dict[str, Any]:
    model = os_fleet_model(2, health_timeout="PT5M")
    model["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"]["enableAutomaticOSUpgrade"] = False
    extensions = model["properties"]["virtualMachineProfile"]["extensionProfile"]["extensions"]
    health = next(e for e in extensions if e["properties"]["type"] == "ApplicationHealthLinux")
    health["properties"]["settings"] = {"protocol": "http", "port": 8080, "requestPath": "/health"}
    return copy.deepcopy(model)


class Timeline:
    """When instance 0's reimage ended and when its rollback was decided, from the runtime's events."""

    def __init__(self) -> None:
        self.reimaged: float | None = None
        self.decided: float | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, ActionFinished) and event.scale_set == NAME:
            action = event.result.action
            if action.kind is ActionKind.REIMAGE and action.instance_id == 0 and self.reimaged is None:
                self.reimaged = time.monotonic()
        elif isinstance(event, AttemptChanged) and event.attempt.scale_set == NAME and self.decided is None:
            progress = event.attempt.instances.get(0)
            if progress is not None and progress.step in (Step.ROLLBACK, Step.ROLLING_BACK, Step.ROLLED_BACK):
                self.decided = time.monotonic()


async def all_healthy(orchestrator: Orchestrator, timeout: float = 300) -> None:
    async with asyncio.timeout(timeout):
        while True:
            seen = orchestrator.health.version
            if all(i.view.healthy for i in await orchestrator.scale_sets.instances(NAME)):
                return
            await orchestrator.health.wait_changed(seen, 5.0)


async def one_round(orchestrator: Orchestrator, version: str) -> tuple[float, str]:
    # 'latest' is this version alone: the others are excluded, and the previous round's quarantine is cleared.
    for other in await orchestrator.galleries.versions("g", "os"):
        if other.version != "1.0.0":
            chosen = other.version == version
            await orchestrator.galleries.publish(replace(other, quarantine=None, exclude_from_latest=not chosen))
    timeline = Timeline()
    orchestrator.events.subscribe(timeline)
    attempt = await orchestrator.upgrades.start(NAME, started_by=StartedBy.PLATFORM)
    done = await orchestrator.upgrades.wait(attempt.id, 600)
    assert done.status is AttemptStatus.FAULTED, (version, done.status)
    assert timeline.reimaged is not None and timeline.decided is not None
    await all_healthy(orchestrator)
    return timeline.decided - timeline.reimaged, done.instances[0].error or ""


async def main() -> int:
    os_image.build("1.0.0", bad=False)
    for version, flags in KINDS.values():
        os_image.build(
            version, bad=flags.get("bad", False), silent=flags.get("silent", False), exits=flags.get("exits", False)
        )
    work = Path(tempfile.mkdtemp(prefix="overhaul-decide-bench-"))
    store = SqliteStore(work / "overhaul.db")
    driver = EngineDriver(EngineSettings(config_root=work / "config", service_dir=work / "podman"))
    await driver.start()
    orchestrator = Orchestrator(store, driver, HealthMonitor())
    await orchestrator.start()
    results: dict[str, list[float]] = {kind: [] for kind in KINDS}
    reasons: dict[str, str] = {}
    try:
        await orchestrator.galleries.put_definition(ImageDefinition("g", "os", "contoso", "os", "bookworm"))
        for version in ("1.0.0", *(v for v, _ in KINDS.values())):
            reference = f"{os_image.REPO}:{version}"
            image = ImageVersion("g", "os", version, reference, version != "1.0.0", published_at=time.time())
            await orchestrator.galleries.publish(image)  # the bad ones excluded from 'latest' until their round
        await orchestrator.scale_sets.put(NAME, bench_model())
        await all_healthy(orchestrator)
        for _ in range(ROUNDS):
            for kind, (version, _) in KINDS.items():
                seconds, reasons[kind] = await one_round(orchestrator, version)
                results[kind].append(seconds)
    finally:
        if await store.get_scale_set(NAME) is not None:
            await orchestrator.scale_sets.delete(NAME)
        await orchestrator.close()
        await driver.close()
        await store.close()
    print(
        f"\nbad version, agent at its default settings (grace {GRACE:g} s, interval {INTERVAL:g} s), "
        f"instanceHealthTimeout 300 s; reimage end -> rollback decision ({ROUNDS} rounds, medians)"
    )
    print(f"{'version':<22}{'seconds':>10}{'target':>10}  rounds")
    for kind, values in results.items():
        median = statistics.median(values)
        verdict = "OK" if median <= TARGET else "MISSED"
        rounds = ", ".join(f"{v:.2f}" for v in values)
        print(f"{kind:<22}{median:>10.2f}{TARGET:>10.2f}  {rounds}  {verdict}")
    for kind, reason in reasons.items():
        print(f"  {kind}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
