"""Resource groups and deployments at the runtime: resources stored before groups were kept get theirs at start
(located where they are), a group deletion a stop interrupted is finished by the next start, and a deployment a stop
interrupted ends Failed saying so."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.gallery import ImageDefinition
from overhaul.core.model import ScaleSetRef
from overhaul.core.resources import RESOURCE_GROUP_TYPE, Resource
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import FAST, small, version


async def seeded(path: Path, driver: MemoryDriver, *, gallery: bool = False) -> tuple[Orchestrator, SqliteStore]:
    """An orchestrator over the store at ``path``, started; with ``gallery``, image g/tiny and its 1.0.0."""
    store = SqliteStore(path)
    made = Orchestrator(store, driver, HealthMonitor(), settings=FAST)
    await made.start()
    if gallery:
        await made.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
        await made.galleries.publish(version("1.0.0"))
    return made, store


async def test_resources_stored_before_groups_were_kept_get_their_groups_at_start(tmp_path: Path) -> None:
    driver = MemoryDriver()
    first, store = await seeded(tmp_path / "overhaul.db", driver, gallery=True)
    await first.scale_sets.put(ScaleSetRef("s1", "old", "web"), small(2))
    for made in await store.list_resources(RESOURCE_GROUP_TYPE):  # as a database from before groups has none
        await store.delete_resource(made.id)
    await first.close()
    await store.close()

    again, store = await seeded(tmp_path / "overhaul.db", driver)
    try:
        groups = await store.list_resources(RESOURCE_GROUP_TYPE)
        assert {(g.subscription, g.name, g.location) for g in groups} >= {("s1", "old", "local")}
        assert (await again.resource_groups.get("s1", "old")).doc["properties"]["provisioningState"] == "Succeeded"
    finally:
        await again.close()
        await store.close()


async def test_a_deletion_interrupted_by_a_stop_is_finished_at_the_next_start(tmp_path: Path) -> None:
    driver = MemoryDriver()
    first, store = await seeded(tmp_path / "overhaul.db", driver, gallery=True)
    await first.scale_sets.put(ScaleSetRef("s1", "doomed", "web"), small(2))
    await first.resource_groups.adopt()
    group = await first.resource_groups.get("s1", "doomed")
    # Stopped right after marking it: what a crash between the mark and the work leaves.
    marked = replace(group, doc=dict(group.doc) | {"properties": {"provisioningState": "Deleting"}})
    await store.put_resource(marked)
    await first.close()
    await store.close()

    again, store = await seeded(tmp_path / "overhaul.db", driver)
    try:
        await again.resource_groups.wait_deleted("s1", "doomed", timeout=30)
        assert await again.resource_groups.find("s1", "doomed") is None
        assert await again.scale_sets.list("s1", "doomed") == []
        assert not await driver.observe("web")
    finally:
        await again.close()
        await store.close()


async def test_a_deployment_a_stop_interrupted_ends_failed_saying_so(tmp_path: Path) -> None:
    driver = MemoryDriver()
    first, store = await seeded(tmp_path / "overhaul.db", driver)
    doc = {"name": "d", "properties": {"provisioningState": "Running"}}
    await store.put_resource(Resource("s1", "g", "Microsoft.Resources/deployments", "d", doc))
    await first.close()
    await store.close()

    again, store = await seeded(tmp_path / "overhaul.db", driver)
    try:
        [found] = await store.list_resources("Microsoft.Resources/deployments")
        assert found.doc["properties"]["provisioningState"] == "Failed"
        assert found.doc["properties"]["error"]["code"] == "DeploymentInterrupted"
    finally:
        await again.close()
        await store.close()
