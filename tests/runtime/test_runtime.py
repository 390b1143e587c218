"""The runtime's guarantees over the in-memory driver and real SQLite: one active attempt per scale set (the store's
compare-and-set), serialised writes, supervised attempts, transient vs permanent engine errors, commits retried,
cancels through the store, images checked before an instance is touched, and resources keyed by ARM id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from overhaul.core.errors import Conflict, InvalidInput, NotFound
from overhaul.core.gallery import ImageDefinition
from overhaul.core.model import ScaleSetRef, model_digest
from overhaul.core.rollout import AttemptStatus, StartedBy, Step, start
from overhaul.ports.driver import DriverError, EngineUnavailable, InstanceSpec
from tests.builders import Runtime, small, version


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(tmp_path / "overhaul.db")
    await rt.orchestrator.start()
    await rt.orchestrator.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
    await rt.orchestrator.galleries.publish(version("1.0.0"))
    yield rt
    await rt.orchestrator.close()
    await rt.store.close()


async def test_concurrent_starts_give_one_attempt(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small())
    await orchestrator.galleries.publish(version("2.0.0"))
    results = await asyncio.gather(*(orchestrator.upgrades.start("web") for _ in range(50)), return_exceptions=True)
    started = [r for r in results if not isinstance(r, BaseException)]
    assert len(started) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))
    done = await orchestrator.upgrades.wait(started[0].id, 10)
    assert done.status is AttemptStatus.COMPLETED


async def test_the_store_refuses_a_second_active_attempt(runtime: Runtime) -> None:
    """The compare-and-set holds below the orchestrator too (a second process, a second orchestrator)."""
    await runtime.orchestrator.scale_sets.put("web", small())
    model = await runtime.orchestrator.scale_sets.get("web")
    views: dict[int, Any] = {}

    def new(attempt_id: str) -> Any:
        return start(
            attempt_id=attempt_id,
            scale_set="web",
            target_version="1.0.0",
            started_by=StartedBy.USER,
            disable_automatic_rollback=False,
            policy=model.upgrade_policy.rolling,
            capacity=0,
            views=views,
            now=1.0,
        )

    assert await runtime.store.start_attempt(new("a"), {}) is None
    assert await runtime.store.start_attempt(new("b"), {}) == "a"
    assert [s.attempt.id for s in await runtime.store.unfinished_attempts()] == ["a"]


async def test_concurrent_creates_and_a_change_during_an_attempt(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    results = await asyncio.gather(*(orchestrator.scale_sets.put("web", small()) for _ in range(30)))
    assert all(model.capacity == 4 for model, _ in results)
    assert sum(created for _, created in results) == 1
    assert sorted(await runtime.driver.observe("web")) == [0, 1, 2, 3]
    await orchestrator.galleries.publish(version("2.0.0"))
    runtime.driver.fail("commit", *[EngineUnavailable("slow engine")] * 20)  # keeps the attempt going a while
    attempt = await orchestrator.upgrades.start("web")
    with pytest.raises(Conflict, match="in progress"):
        await orchestrator.scale_sets.put("web", small(6))
    unchanged, _ = await orchestrator.scale_sets.put("web", small())
    assert unchanged == await orchestrator.scale_sets.get("web")  # no change: fine
    await orchestrator.upgrades.wait(attempt.id, 10)
    changed, created = await orchestrator.scale_sets.put("web", small(6))
    assert (changed.capacity, created) == (6, False)


async def test_transient_errors_never_fail_an_instance(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small())
    await orchestrator.galleries.publish(version("2.0.0"))
    runtime.driver.fail("reimage", *[EngineUnavailable("connection reset")] * 5)
    runtime.driver.fail("commit", DriverError("container is busy"), EngineUnavailable("engine restarting"))
    attempt = await orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)
    runtime.driver.fail("observe", *[EngineUnavailable("engine unreachable")] * 3)  # power state is the health
    done = await orchestrator.upgrades.wait(attempt.id, 10)
    assert done.status is AttemptStatus.COMPLETED
    assert done.successful == 4 and done.failed == 0
    states = await runtime.driver.observe("web")
    assert all(s.version == "2.0.0" and s.previous is None for s in states.values())  # every commit retried to done


async def test_a_permanent_error_fails_only_its_step(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small(5))
    await orchestrator.galleries.publish(version("2.0.0"))
    runtime.driver.fail("reimage", DriverError("start web_0: exec /app: exec format error"))
    attempt = await orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)
    done = await orchestrator.upgrades.wait(attempt.id, 10)
    assert done.instances[0].step is Step.ROLLED_BACK
    assert "exec format error" in (done.instances[0].error or "")
    assert (await runtime.driver.observe("web"))[0].version == "1.0.0"


async def test_a_reconciler_that_fails_is_restarted(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small())
    await orchestrator.galleries.publish(version("2.0.0"))
    calls = 0
    journal_begin = runtime.store.journal_begin

    async def broken_once(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk I/O error")
        await journal_begin(*args)

    runtime.store.journal_begin = broken_once  # type: ignore[method-assign,assignment]
    attempt = await orchestrator.upgrades.start("web")
    done = await orchestrator.upgrades.wait(attempt.id, 10)
    assert done.status is AttemptStatus.COMPLETED
    assert orchestrator.supervisor.restarts == 1


async def test_start_resumes_every_unfinished_attempt(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small())
    await orchestrator.scale_sets.put("api", small())
    await orchestrator.galleries.publish(version("2.0.0"))
    runtime.driver.fail("commit", *[EngineUnavailable("down")] * 1000)  # nothing can finish before the "crash"
    first = await orchestrator.upgrades.start("web")
    second = await orchestrator.upgrades.start("api")
    await asyncio.sleep(0.05)
    runtime.driver.failures.clear()
    await runtime.restart()
    for attempt in (first, second):
        done = await runtime.orchestrator.upgrades.wait(attempt.id, 10)
        assert done.status is AttemptStatus.COMPLETED and done.done


async def test_cancel_is_read_from_the_store(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small(10))
    await orchestrator.galleries.publish(version("2.0.0"))
    runtime.driver.fail("commit", *[EngineUnavailable("slow")] * 5)
    attempt = await orchestrator.upgrades.start("web")
    # Another process (or orchestrator) marks the cancel in the store; nothing in this process is told.
    assert await runtime.store.request_cancel(attempt.id)
    done = await orchestrator.upgrades.wait(attempt.id, 10)
    assert done.status is AttemptStatus.CANCELLED
    assert done.successful < 10


async def test_a_missing_image_is_refused_before_any_instance_is_touched(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small())
    await orchestrator.galleries.publish(version("2.0.0"))
    runtime.driver.missing_images.add("localhost/tiny:2.0.0")
    runtime.driver.calls.clear()
    with pytest.raises(InvalidInput, match=r"no image 'localhost/tiny:2\.0\.0'"):
        await orchestrator.scale_sets.reimage("web", [0])
    with pytest.raises(InvalidInput, match="no image"):
        await orchestrator.scale_sets.put("web", small(6))  # a scale-out onto 'latest' = 2.0.0
    with pytest.raises(InvalidInput, match="no image"):
        await orchestrator.upgrades.start("web")
    assert runtime.driver.calls == []
    states = await runtime.driver.observe("web")
    assert sorted(states) == [0, 1, 2, 3]
    assert all(s.running and s.version == "1.0.0" and s.previous is None for s in states.values())


async def test_a_failed_reimage_restores_the_previous_os_disk(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small())
    runtime.driver.fail_reimage = lambda spec: spec.instance_id == 1  # fails after the old disk was set aside
    with pytest.raises(Exception, match="could not run"):
        await orchestrator.scale_sets.reimage("web", [0, 1])
    states = await runtime.driver.observe("web")
    assert all(s.running and s.previous is None for s in states.values())


async def test_a_crash_mid_reimage_is_repaired_at_start(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small())
    spec = await orchestrator.instances.spec(await orchestrator.scale_sets.get("web"), 2, "1.0.0")
    runtime.driver.fail_reimage = lambda s: True
    with pytest.raises(DriverError):
        await runtime.driver.reimage(InstanceSpec(**{**spec.__dict__, "os_disk": "other"}))
    assert (await runtime.driver.observe("web"))[2].current is None  # as a crash mid-reimage leaves it
    await runtime.restart()
    state = (await runtime.driver.observe("web"))[2]
    assert state.running and state.previous is None


async def test_resources_are_keyed_by_their_arm_id(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put(ScaleSetRef("sub", "rg1", "web"), small())
    assert (
        await orchestrator.scale_sets.get(ScaleSetRef("SUB", "RG1", "WEB"))
    ).name == "web"  # ARM compares ids case-blind
    with pytest.raises(NotFound):
        await orchestrator.scale_sets.get(ScaleSetRef("sub", "other", "web"))
    with pytest.raises(NotFound):
        await orchestrator.scale_sets.delete(ScaleSetRef("sub", "nope", "web"))
    with pytest.raises(Conflict, match="exists in resource group rg1"):
        await orchestrator.scale_sets.put(ScaleSetRef("sub", "rg2", "web"), small())
    assert sorted(await runtime.driver.observe("web")) == [0, 1, 2, 3]
    assert [m.name for m in await orchestrator.scale_sets.list("sub", "rg2")] == []
    await orchestrator.scale_sets.delete(ScaleSetRef("sub", "Rg1", "Web"))
    assert await runtime.driver.observe("web") == {}


async def test_a_manual_reimage_rides_out_transient_errors_and_commits(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small())
    runtime.driver.fail("reimage", EngineUnavailable("engine restarting"), EngineUnavailable("connection reset"))
    runtime.driver.fail("commit", DriverError("container is busy"))
    await orchestrator.scale_sets.reimage("web", [1, 2])
    states = await runtime.driver.observe("web")
    assert all(s.running and s.previous is None for s in states.values())
    assert sorted(name for call, name in runtime.driver.calls if call == "reimage") == ["web_1", "web_2"]
    assert sorted(name for call, name in runtime.driver.calls if call == "commit") == ["web_1", "web_2"]
    assert runtime.driver.failures == {"reimage": [], "commit": []}  # every injected error was met and ridden out


async def test_an_instance_stopped_behind_a_rollback_runs_when_the_attempt_ends(runtime: Runtime) -> None:
    """A stop that a killed engine delivers late can leave a restored OS disk stopped: the attempt's end starts it."""
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small())
    await orchestrator.galleries.publish(version("2.0.0"))
    runtime.driver.fail("reimage", DriverError("start web_0: exec /app: exec format error"))
    rollback = runtime.driver.rollback

    async def rollback_then_stopped(spec: InstanceSpec) -> None:
        await rollback(spec)
        state = runtime.driver.instances["web"][spec.instance_id]
        assert state.current is not None
        runtime.driver.instances["web"][spec.instance_id] = replace(
            state, current=replace(state.current, running=False)
        )

    runtime.driver.rollback = rollback_then_stopped  # type: ignore[method-assign]
    attempt = await orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)
    done = await orchestrator.upgrades.wait(attempt.id, 10)
    assert done.instances[0].step is Step.ROLLED_BACK
    states = await runtime.driver.observe("web")
    assert all(s.running and s.previous is None for s in states.values()), states


@pytest.mark.parametrize("use_policy", [False, True])
async def test_automatic_upgrades_use_the_scale_sets_policy_only_when_told(runtime: Runtime, use_policy: bool) -> None:
    orchestrator = runtime.orchestrator
    doc = small(5)
    doc["properties"]["upgradePolicy"] = {
        "mode": "Rolling",
        "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True, "useRollingUpgradePolicy": use_policy},
        "rollingUpgradePolicy": {"maxBatchInstancePercent": 100, "overhaul": {"instanceHealthTimeout": "PT42S"}},
    }
    doc["properties"]["virtualMachineProfile"]["overhaul"]["healthFromPowerState"] = True
    await orchestrator.scale_sets.put("web", doc)
    await orchestrator.galleries.publish(version("2.0.0"))
    platform = await orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)
    await orchestrator.upgrades.wait(platform.id, 10)
    assert platform.policy.max_batch_instance_percent == (100 if use_policy else 20)  # Azure's default otherwise
    assert platform.policy.instance_health_timeout == 42.0
    await orchestrator.galleries.publish(version("3.0.0"))
    manual = await orchestrator.upgrades.start("web", started_by=StartedBy.USER)
    assert manual.policy.max_batch_instance_percent == 100  # a person's start always uses the scale set's policy
    await orchestrator.upgrades.wait(manual.id, 10)


async def test_a_version_that_faulted_is_quarantined_until_a_person_clears_it(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small(5))
    await orchestrator.galleries.publish(version("2.0.0"))
    runtime.driver.exiting_images.add("localhost/tiny:2.0.0")  # a broken build: its instances exit at once
    attempt = await orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)
    done = await orchestrator.upgrades.wait(attempt.id, 10)
    assert done.status is AttemptStatus.FAULTED
    assert done.instances[0].step is Step.ROLLED_BACK
    assert "not running (it exited)" in (done.instances[0].error or "")
    bad = await orchestrator.galleries.version("g", "tiny", "2.0.0")
    assert bad.quarantined and attempt.id in (bad.quarantine or "") and "instance 0" in (bad.quarantine or "")
    # The attempt's error says what to do next.
    assert "version 2.0.0 is quarantined" in (done.error_message or "")
    assert "--gallery-image-version 2.0.0 --set overhaul.quarantined=false" in (done.error_message or "")
    # 'latest' skips it: a scale-out, a new scale set and a reimage all land on 1.0.0.
    await orchestrator.scale_sets.put("web", small(6))
    await orchestrator.scale_sets.put("api", small(2))
    await orchestrator.scale_sets.reimage("web", [1])
    for name in ("web", "api"):
        assert {s.version for s in (await runtime.driver.observe(name)).values()} == {"1.0.0"}
    # ... until a person clears it (or republishes).
    await orchestrator.galleries.publish(replace(bad, quarantine=None))
    assert (await orchestrator.instances.resolve(await orchestrator.scale_sets.get("web"))).version == "2.0.0"


async def test_a_failed_manual_upgrade_names_the_command_that_restores_it(runtime: Runtime) -> None:
    orchestrator = runtime.orchestrator
    await orchestrator.scale_sets.put("web", small(5))
    await orchestrator.galleries.publish(version("2.0.0"))
    runtime.driver.exiting_images.add("localhost/tiny:2.0.0")
    attempt = await orchestrator.upgrades.start("web", started_by=StartedBy.USER)  # no rollback
    done = await orchestrator.upgrades.wait(attempt.id, 10)
    assert done.status is AttemptStatus.FAULTED and done.instances[0].step is Step.FAILED
    command = "overhaul vmss reimage --resource-group default --name web --instance-ids 0"
    assert command in (done.error_message or ""), done.error_message
    # Doing what it says restores the instance on the last good version.
    await orchestrator.scale_sets.reimage("web", [0])
    assert (await runtime.driver.observe("web"))[0].version == "1.0.0"
    assert (await runtime.driver.observe("web"))[0].running


async def test_publishing_a_version_whose_image_the_engine_lacks_is_refused(runtime: Runtime) -> None:
    runtime.driver.missing_images.add("localhost/tiny:2.0.0")
    with pytest.raises(InvalidInput, match=r"containerImage: the engine has no image 'localhost/tiny:2\.0\.0'"):
        await runtime.orchestrator.galleries.publish(version("2.0.0"))
    assert [v.version for v in await runtime.orchestrator.galleries.all_versions()] == ["1.0.0"]


def with_mode(mode: str, custom_data: str, capacity: int = 4) -> dict[str, Any]:
    doc = small(capacity)
    doc["properties"]["upgradePolicy"] = {"mode": mode, "rollingUpgradePolicy": {"maxBatchInstancePercent": 50}}
    doc["properties"]["virtualMachineProfile"]["osProfile"] = {"customData": custom_data}
    return doc


async def models_applied(runtime: Runtime, name: str) -> dict[int, bool]:
    """Each instance's latestModelApplied, as the instance listing says it."""
    model = await runtime.orchestrator.scale_sets.get(name)
    digest = model_digest(model)
    return {i.instance_id: i.view.model_digest == digest for i in await runtime.orchestrator.scale_sets.instances(name)}


async def test_a_model_change_waits_in_manual_mode_until_update_instances(runtime: Runtime) -> None:
    """Azure's upgradePolicy.mode for model changes: Manual waits, latestModelApplied says so honestly, and
    `update-instances` gives the chosen instances new OS disks with the new model on the version they run."""
    await runtime.orchestrator.scale_sets.put("web", with_mode("Manual", "v1 data"))
    assert await models_applied(runtime, "web") == dict.fromkeys(range(4), True)
    await runtime.orchestrator.galleries.publish(version("2.0.0"))  # the model's 'latest' moves on; instances stay
    await runtime.orchestrator.scale_sets.put("web", with_mode("Manual", "v2 data"))
    assert await runtime.orchestrator.upgrades.history("web") == []  # nothing started
    assert await models_applied(runtime, "web") == dict.fromkeys(range(4), False)
    attempt = await runtime.orchestrator.upgrades.manual("web", [1, 3])
    done = await runtime.orchestrator.upgrades.wait(attempt.id, 30)
    assert done.status is AttemptStatus.COMPLETED, done.error_message
    assert await models_applied(runtime, "web") == {0: False, 1: True, 2: False, 3: True}
    states = await runtime.driver.observe("web")
    assert {i: s.version for i, s in states.items()} == dict.fromkeys(range(4), "1.0.0")  # the OS image stayed
    with pytest.raises(InvalidInput, match="no instance 9"):
        await runtime.orchestrator.upgrades.manual("web", [9])


@pytest.mark.parametrize("mode", ["Automatic", "Rolling"])
async def test_a_model_change_is_applied_at_once_or_in_batches(runtime: Runtime, mode: str) -> None:
    await runtime.orchestrator.scale_sets.put("web", with_mode(mode, "v1 data"))
    await runtime.orchestrator.scale_sets.put("web", with_mode(mode, "v2 data"))
    (stored,) = await runtime.orchestrator.upgrades.history("web")
    done = await runtime.orchestrator.upgrades.wait(stored.attempt.id, 30)
    assert done.status is AttemptStatus.COMPLETED, done.error_message
    assert done.batches_started == (1 if mode == "Automatic" else 2)  # all at once, or maxBatchInstancePercent 50
    assert await models_applied(runtime, "web") == dict.fromkeys(range(4), True)
    # A change that makes the same instances (the policy, the capacity) is no model upgrade.
    policy_only = with_mode(mode, "v2 data")
    policy_only["properties"]["upgradePolicy"]["rollingUpgradePolicy"]["maxBatchInstancePercent"] = 25
    await runtime.orchestrator.scale_sets.put("web", policy_only)
    assert len(await runtime.orchestrator.upgrades.history("web")) == 1
