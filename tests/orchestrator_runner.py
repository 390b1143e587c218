"""An orchestrator process for the crash test: starts (or resumes) a rolling upgrade and waits for its end."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from overhaul.adapters.drivers.engine import EngineDriver, EngineSettings
from overhaul.adapters.health.monitor import HealthMonitor, HealthSettings
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.rollout import StartedBy
from overhaul.runtime.orchestrator import Orchestrator


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--engine", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--scale-set", required=True)
    parser.add_argument("--start", action="store_true")
    args = parser.parse_args()
    store = SqliteStore(args.db)
    driver = EngineDriver(EngineSettings(url=args.engine, config_root=Path(args.config)))
    await driver.start()
    orchestrator = Orchestrator(store, driver, HealthMonitor(HealthSettings(probe_interval=0.2, probe_timeout=1.0)))
    try:
        await orchestrator.start()  # resumes what a crash left running
        if args.start:
            await orchestrator.upgrades.start(args.scale_set, started_by=StartedBy.PLATFORM)
        latest = await orchestrator.upgrades.latest(args.scale_set)
        if latest is None:
            return 1
        done = await orchestrator.upgrades.wait(latest.attempt.id, 150)
        print(done.status.value)
        return 0
    finally:
        await orchestrator.close()
        await driver.close()
        await store.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(asyncio.run(main()))
