"""Chaos, seeded: rolling upgrades over the in-memory driver wrapped in the fault injector, with transient and
permanent engine errors, latency, concurrent starts, cancels, and restarts of the whole runtime from the store in
the middle of attempts. Each run checks the design's invariants; a failing seed replays exactly."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from overhaul.adapters.drivers.faults import FaultPlan, FaultyDriver
from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.http.metrics import OrchestratorMetrics
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.aio import Changes
from overhaul.core.errors import Conflict, Unavailable
from overhaul.core.gallery import ImageDefinition, ImageVersion
from overhaul.core.model import HealthProbe
from overhaul.core.planner import Health
from overhaul.core.rollout import Attempt, StartedBy
from overhaul.ports.events import AttemptChanged, Event
from overhaul.ports.health import HealthReport, Key
from overhaul.ports.store import HistoryRetention
from overhaul.runtime.orchestrator import Orchestrator
from overhaul.runtime.settings import RuntimeSettings

# make test and make check run a sample of the seeds; make chaos runs them all (OVERHAUL_CHAOS_RUNS=500).
RUNS = int(os.environ.get("OVERHAUL_CHAOS_RUNS", "50"))
BLOCKS = 10
BAD = "3.0.0"  # instances on it never become healthy
VERSIONS = ("1.0.0", "2.0.0", BAD, "4.0.0")
FAST = RuntimeSettings(retry_min=0.0005, retry_max=0.004, restart_min=0.0005, restart_max=0.004)
# Words of the faults that are not the image's (transient, and the infrastructure's in faults.py).
TRANSIENT_WORDS = (
    "engine unreachable",
    "connection reset",
    "address already in use",
    "state improper",
    "already in use",
    "duplicate allocation",
    "no such image",
    "no space left",
)


class VersionHealth:
    """A health source that reads the engine: an instance is Healthy unless it runs the bad version."""

    def __init__(self, driver: MemoryDriver) -> None:
        self.driver = driver
        self.changes = Changes()
        self.watch_errors = 0

    @property
    def version(self) -> int:
        return self.changes.version

    def report(self, key: Key) -> HealthReport | None:
        state = self.driver.instances.get(key[0], {}).get(key[1])
        if state is None or not state.running:
            return None
        health = Health.UNHEALTHY if state.version == BAD else Health.HEALTHY
        return HealthReport(health, time.time())

    async def wait_changed(self, seen: int, timeout: float | None) -> None:
        await self.changes.wait(seen, timeout)

    def watch_agent(self, key: Key, address: str, port: int) -> None:
        return None

    def watch_probe(self, key: Key, probe: HealthProbe, address: str, port: int) -> None:
        return None

    def expect_outage(self, key: Key) -> None:
        return None

    def reset(self, key: Key) -> None:
        self.changes.bump()

    async def unwatch(self, key: Key) -> None:
        return None

    async def close(self) -> None:
        return None


def model(rng: random.Random) -> dict[str, Any]:
    return {
        "sku": {"capacity": rng.randint(1, 7)},
        "properties": {
            "upgradePolicy": {
                "mode": "Rolling",
                "rollingUpgradePolicy": {
                    "maxBatchInstancePercent": rng.choice([20, 34, 50, 100]),
                    "maxUnhealthyUpgradedInstancePercent": rng.choice([0, 20, 100]),
                    "maxUnhealthyInstancePercent": 100,
                    "overhaul": {"instanceHealthTimeout": "PT0.02S"},
                },
            },
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {"publisher": "p", "offer": "o", "sku": "s", "version": "latest"},
                    "dataDisks": [{"lun": 0}],
                },
                # A probe makes the health source count (the fake above answers for it).
                "networkProfile": {"healthProbe": {"protocol": "Tcp", "port": 8080}},
            },
        },
    }


async def retrying(call: Callable[[], Any]) -> Any:
    """As a client would: an answer of 503 (engine unavailable) is tried again."""
    for _ in range(200):
        try:
            return await call()
        except Unavailable:
            await asyncio.sleep(0)
    raise AssertionError("the engine stayed unavailable")


async def one_run(seed: int, db: Path) -> None:  # noqa: PLR0915 (one scenario, read top to bottom)
    rng = random.Random(seed)
    memory = MemoryDriver()
    plan = FaultPlan(
        transient=rng.choice([0.0, 0.1, 0.3]), permanent_reimage=0.05, infrastructure=rng.choice([0.0, 0.1, 0.3])
    )
    driver = FaultyDriver(memory, rng, plan)
    # Its restarts are the process's, which WAL survives without a sync per commit: durability is not its subject.
    store = SqliteStore(db, HistoryRetention(keep=100), durable=False)
    health = VersionHealth(memory)
    ended: Counter[str] = Counter()
    violations: list[str] = []
    incarnations: list[OrchestratorMetrics] = []

    rolling: set[str] = set()  # attempts seen rolling forward, across runtime restarts

    def check(event: Event) -> None:
        if isinstance(event, AttemptChanged):
            if event.attempt.status.terminal:
                rolling.discard(event.attempt.id)
            else:
                rolling.add(event.attempt.id)
            if len(rolling) > 1:
                violations.append(f"two attempts roll forward at once: {sorted(rolling)}")

    def runtime() -> Orchestrator:
        orchestrator = Orchestrator(store, driver, health, settings=FAST)
        orchestrator.events.subscribe(check)
        incarnations.append(OrchestratorMetrics(orchestrator))  # what /metrics would count, one process at a time
        return orchestrator

    orchestrator = runtime()
    try:
        await retrying(orchestrator.start)
        await orchestrator.galleries.put_definition(ImageDefinition("g", "img", "p", "o", "s"))
        await retrying(
            functools.partial(
                orchestrator.galleries.publish, ImageVersion("g", "img", "1.0.0", "repo:1.0.0", published_at=1.0)
            )
        )
        await retrying(functools.partial(orchestrator.scale_sets.put, "web", model(rng)))
        for number, version in enumerate(VERSIONS[1:], start=2):
            image = ImageVersion("g", "img", version, f"repo:{version}", published_at=float(number))
            await retrying(functools.partial(orchestrator.galleries.publish, image))
            by = rng.choice([StartedBy.USER, StartedBy.PLATFORM])
            begin = functools.partial(orchestrator.upgrades.start, "web", started_by=by)
            results = await asyncio.gather(retrying(begin), retrying(begin), return_exceptions=True)
            attempts = [r for r in results if not isinstance(r, BaseException)]
            # Of two concurrent starts, at most one runs; the other is refused (409), or both were refused to begin
            # (too many unhealthy instances), which leaves two ended records and nothing running.
            running = [a for a in attempts if not a.status.terminal]
            assert len(running) <= 1, f"seed {seed}: two concurrent starts gave {results}"
            assert all(isinstance(r, Attempt | Conflict) for r in results), f"seed {seed}: {results}"
            attempt = running[0] if running else attempts[0]
            while True:
                if rng.random() < 0.1:
                    with contextlib.suppress(Conflict):
                        await orchestrator.upgrades.cancel("web")
                try:
                    await asyncio.wait_for(orchestrator.upgrades.wait(attempt.id, 5), rng.uniform(0.0, 0.01))
                    break
                except TimeoutError:
                    pass
                if rng.random() < 0.5:  # the whole runtime restarts from the store in the middle of the attempt
                    await orchestrator.close()
                    orchestrator = runtime()
                    await retrying(orchestrator.start)
            stored = await store.get_attempt(attempt.id)
            assert stored is not None and stored.attempt.done
        # Quiet engine, last restart: everything settles.
        driver.enabled = False
        await orchestrator.close()
        orchestrator = runtime()
        await orchestrator.start()
        for stored in await store.attempts("web"):
            await orchestrator.upgrades.wait(stored.attempt.id, 5)
    finally:
        await orchestrator.close()

    assert not violations, f"seed {seed}: {violations}"
    for metrics in incarnations:
        for status in ("Completed", "Faulted", "Cancelled"):
            labels = {"scale_set": "web", "status": status}
            ended[status] += int(metrics.registry.get_sample_value("overhaul_rolling_upgrades_total", labels) or 0)
    history = [s.attempt for s in await store.attempts("web")]
    assert await store.unfinished_attempts() == []
    assert all(a.done and a.status.terminal for a in history), f"seed {seed}: unfinished {history}"
    history_counts = Counter(a.status.value for a in history)
    assert history_counts == +ended, f"seed {seed}: history {history_counts} vs the metrics counters {ended}"
    final = await store.get_scale_set("web")
    assert final is not None
    states = memory.instances.get("web", {})
    for instance_id in range(final.capacity):
        state = states.get(instance_id)
        assert state is not None and state.running and state.previous is None, f"seed {seed}: {instance_id} {state}"
        assert state.version in VERSIONS, f"seed {seed}: {state}"
    for attempt in history:
        for progress in attempt.instances.values():
            if not progress.step.failed:
                continue
            key = ("web", progress.instance_id)
            error = progress.error or ""
            assert not any(word in error for word in TRANSIENT_WORDS), f"seed {seed}: a transient error failed {key}"
            assert attempt.target_version == BAD or key in driver.permanent_failures, f"seed {seed}: {progress}"
    # Never quarantined for an infrastructure fault: only the bad version, or one whose reimage failed the image's
    # way, leaves 'latest'.
    blamed = {
        a.target_version
        for a in history
        if any(("web", p.instance_id) in driver.permanent_failures for p in a.instances.values() if p.step.failed)
    }
    quarantined = {v.version for v in await store.image_versions() if v.quarantined}
    assert quarantined <= {BAD} | blamed, f"seed {seed}: quarantined {quarantined}, blamed {blamed}"
    # An instance on the bad version never counts as upgraded: it never becomes healthy.
    assert all(a.successful == 0 for a in history if a.target_version == BAD), f"seed {seed}: {history}"
    await store.close()


@pytest.mark.parametrize("block", range(BLOCKS))
async def test_invariants_hold_under_faults_and_restarts(block: int, tmp_path: Path) -> None:
    for seed in range(block * RUNS // BLOCKS, (block + 1) * RUNS // BLOCKS):
        await one_run(seed, tmp_path / f"{seed}.db")
