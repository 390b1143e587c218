"""What durable writes cost: the SQLite store's journal writes (the hottest write path: two per instance step) with
synchronous=FULL, as overhaul runs it (an acknowledged write is on disk), against NORMAL (the WAL synced only at
checkpoints; a file system error loses what was written since), side by side in one run, rounds interleaved.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from overhaul.adapters.store.sqlite import SqliteStore  # noqa: E402
from overhaul.core.rollout import Action, ActionKind, ActionResult  # noqa: E402

WRITES = 400
ROUNDS = 5


async def journal_writes(directory: Path, synchronous: str) -> float:
    """Seconds per journal write (a begin and an end each, as a reimage step writes them)."""
    store = SqliteStore(directory / f"{synchronous}.db", durable=synchronous == "FULL")
    action = Action(ActionKind.REIMAGE, 0)
    started = time.perf_counter()
    for _ in range(WRITES // 2):
        await store.journal_begin("bench", [action], time.time())
        await store.journal_end("bench", [ActionResult(action, ok=True)], time.time())
    elapsed = time.perf_counter() - started
    await store.close()
    return elapsed / WRITES


async def main() -> None:
    results: dict[str, list[float]] = {"FULL": [], "NORMAL": []}
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for round_number in range(ROUNDS):
            for mode, seconds in results.items():
                directory = Path(tmp) / f"{mode}-{round_number}"
                directory.mkdir()
                seconds.append(await journal_writes(directory, mode))
    full, normal = (statistics.median(results[m]) for m in ("FULL", "NORMAL"))
    print(f"store journal write, median of {ROUNDS} rounds of {WRITES} (on {ROOT}'s file system):")
    print(f"  synchronous=FULL   {full * 1e3:7.3f} ms")
    print(f"  synchronous=NORMAL {normal * 1e3:7.3f} ms")
    print(f"  FULL / NORMAL      {full / normal:7.2f} x")


if __name__ == "__main__":
    asyncio.run(main())
