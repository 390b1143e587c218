"""A scale set's DELETE as a long-running operation (runtime/deletions.py): InProgress while the engine removes the
instances (the scale set reads Deleting and refuses changes), Succeeded once every instance is gone, Failed with
the engine's error (the scale set stays and says why), taken up again after a stop, and outliving its group."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.errors import Conflict
from overhaul.core.gallery import ImageDefinition
from overhaul.core.model import ScaleSetRef
from overhaul.core.resources import OPERATION_TYPE
from overhaul.ports.driver import DriverError, InstanceSpec
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import FAST, small, version

REF = ScaleSetRef("s1", "rg", "web")


@dataclass
class HeldDriver(MemoryDriver):
    """Deletes only once ``released`` is set; fails them while ``refusal`` says why."""

    released: asyncio.Event = field(default_factory=asyncio.Event)
    refusal: str = ""

    async def delete(self, spec: InstanceSpec, *, keep_data: bool = True) -> None:
        await self.released.wait()
        if self.refusal:
            raise DriverError(self.refusal)
        await super().delete(spec, keep_data=keep_data)


async def started(path: Path, driver: MemoryDriver) -> tuple[Orchestrator, SqliteStore]:
    store = SqliteStore(path)
    made = Orchestrator(store, driver, HealthMonitor(), settings=FAST)
    await made.start()
    return made, store


async def with_scale_set(path: Path, driver: MemoryDriver) -> tuple[Orchestrator, SqliteStore]:
    made, store = await started(path, driver)
    await made.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
    await made.galleries.publish(version("1.0.0"))
    await made.scale_sets.put(REF, small(3))
    await made.resource_groups.adopt()
    return made, store


async def shown_state(o: Orchestrator) -> dict[str, object]:
    doc = (await o.scale_sets.get(REF)).to_json()
    return dict((await o.scale_set_deletions.shown([doc], REF.subscription))[0]["properties"])


async def test_in_progress_until_every_instance_is_gone_then_succeeded(tmp_path: Path) -> None:
    driver = HeldDriver()
    o, store = await with_scale_set(tmp_path / "o.db", driver)
    try:
        model, record = await o.scale_set_deletions.begin(REF)
        assert record.doc["status"] == "InProgress" and record.doc["startTime"]
        await asyncio.sleep(0.05)  # the deletion is under way, held by the engine
        assert len(driver.instances["web"]) == 3
        assert (await shown_state(o))["provisioningState"] == "Deleting"
        with pytest.raises(Conflict, match="being deleted"):
            await o.scale_set_deletions.refuse_while_deleting(REF)
        with pytest.raises(Conflict, match="being deleted"):  # every change comes through put
            await o.scale_sets.put(REF, small(4))
        again = (await o.scale_set_deletions.begin(REF))[1]
        assert again.name == record.name  # a second DELETE follows the running deletion
        assert (await o.scale_set_deletions.find("s1", record.name)) is not None

        driver.released.set()
        await o.scale_set_deletions.wait(record, timeout=10)
        ended = await o.scale_set_deletions.find("s1", record.name)
        assert ended is not None and ended.doc["status"] == "Succeeded" and ended.doc["endTime"], ended
        assert driver.instances.get("web", {}) == {}
        assert await o.scale_sets.find(REF) is None
        assert model.name == "web"
    finally:
        await o.close()
        await store.close()


async def test_a_failed_deletion_ends_failed_and_the_scale_set_stays_saying_why(tmp_path: Path) -> None:
    driver = HeldDriver(refusal="remove web_0: device or resource busy")
    driver.released.set()
    o, store = await with_scale_set(tmp_path / "o.db", driver)
    try:
        _, record = await o.scale_set_deletions.begin(REF)
        await o.scale_set_deletions.wait(record, timeout=10)
        failed = await o.scale_set_deletions.find("s1", record.name)
        assert failed is not None and failed.doc["status"] == "Failed", failed
        assert "device or resource busy" in failed.doc["error"]["message"], failed.doc
        shown = await shown_state(o)
        assert shown["provisioningState"] == "Succeeded"
        assert "device or resource busy" in shown["overhaul"]["lastDeleteError"]["message"]  # type: ignore[index]
        await o.scale_set_deletions.refuse_while_deleting(REF)  # not deleting now: changes are taken

        driver.refusal = ""  # the engine recovers: a second DELETE is a new operation, and it succeeds
        _, second = await o.scale_set_deletions.begin(REF)
        assert second.name != record.name
        await o.scale_set_deletions.wait(second, timeout=10)
        assert await o.scale_sets.find(REF) is None
    finally:
        await o.close()
        await store.close()


async def test_a_deletion_a_stop_interrupted_is_finished_by_the_next_start(tmp_path: Path) -> None:
    driver = HeldDriver()
    first, store = await with_scale_set(tmp_path / "o.db", driver)
    _, record = await first.scale_set_deletions.begin(REF)
    await asyncio.sleep(0.05)
    await first.close()  # cancels the deletion where it waits on the engine
    await store.close()
    assert len(driver.instances["web"]) == 3

    driver.released.set()
    again, store = await started(tmp_path / "o.db", driver)
    try:
        await again.scale_set_deletions.wait(record, timeout=10)
        ended = await again.scale_set_deletions.find("s1", record.name)
        assert ended is not None and ended.doc["status"] == "Succeeded", ended
        assert driver.instances.get("web", {}) == {} and await again.scale_sets.find(REF) is None
    finally:
        await again.close()
        await store.close()


async def test_the_operation_outlives_its_group_and_is_not_a_resource_of_it(tmp_path: Path) -> None:
    driver = HeldDriver()
    driver.released.set()
    first, store = await with_scale_set(tmp_path / "o.db", driver)
    _, record = await first.scale_set_deletions.begin(REF)
    await first.scale_set_deletions.wait(record, timeout=10)
    await first.resource_groups.begin_delete("s1", "rg")
    await first.resource_groups.wait_deleted("s1", "rg", timeout=10)
    assert await first.resource_groups.find("s1", "rg") is None
    assert [r.name for r in await store.list_resources(OPERATION_TYPE)] == [record.name]
    await first.close()
    await store.close()

    again, store = await started(tmp_path / "o.db", driver)  # the record does not bring its group back
    try:
        assert await again.resource_groups.find("s1", "rg") is None
        assert (await again.scale_set_deletions.find("s1", record.name)) is not None
    finally:
        await again.close()
        await store.close()


async def test_a_deployment_does_not_bring_back_a_scale_set_being_deleted(tmp_path: Path) -> None:
    driver = HeldDriver()
    o, store = await with_scale_set(tmp_path / "o.db", driver)
    try:
        _, record = await o.scale_set_deletions.begin(REF)
        template = {"resources": [{"type": "Microsoft.Compute/virtualMachineScaleSets", "name": "web", **small(3)}]}
        deployment = await o.deployments.put("s1", "rg", "again", {"properties": {"template": template}})
        await o.deployments.wait(deployment.id, timeout=10)
        props = (await o.deployments.get("s1", "rg", "again")).doc["properties"]
        assert props["provisioningState"] == "Failed", props
        assert props["error"]["details"][0]["code"] == "OperationNotAllowed", props["error"]
        driver.released.set()
        await o.scale_set_deletions.wait(record, timeout=10)
        assert await o.scale_sets.find(REF) is None
    finally:
        await o.close()
        await store.close()
