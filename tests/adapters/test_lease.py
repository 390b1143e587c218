"""The state directory's lease (adapters/lease.py), the one for the embedded SQLite store: one holder at a time,
the fencing token growing with every holder (across restarts too), who holds it, and lost once the directory is
replaced underneath."""

from __future__ import annotations

from pathlib import Path

from overhaul.adapters.lease import StateDirLease
from overhaul.ports.lease import Holder

FIRST = Holder("node1:41", "http://127.0.0.1:8070")
SECOND = Holder("node1:42", "http://127.0.0.1:8071")


async def test_the_fencing_token_grows_with_every_holder_and_the_holder_is_named(tmp_path: Path) -> None:
    first, second = StateDirLease(tmp_path / "state", FIRST), StateDirLease(tmp_path / "state", SECOND)
    assert await first.acquire() == 1
    assert first.token == 1 and first.valid() and await first.renew()
    assert await second.acquire() is None  # held: not taken, and who holds it is known
    assert await second.holder() == FIRST
    assert second.token is None and not second.valid()
    await first.release()
    assert not first.valid()
    assert await second.acquire() == 2  # a write under token 1 can be told from one under 2
    assert await first.holder() == SECOND
    await second.release()
    assert await StateDirLease(tmp_path / "state", FIRST).acquire() == 3  # kept in the directory: a restart too


async def test_a_state_directory_replaced_underneath_loses_the_lease(tmp_path: Path) -> None:
    state = tmp_path / "state"
    lease = StateDirLease(state, FIRST)
    assert await lease.acquire() == 1
    state.rename(tmp_path / "moved")
    state.mkdir()
    assert not await lease.renew()
    assert lease.lost.is_set() and not lease.valid()
    assert "the state directory" in (lease.check() or "")
    await lease.release()
