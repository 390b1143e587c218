"""Resource groups and deployments at the runtime: resources stored before groups were kept get theirs at start
(located where they are), a group deletion a stop interrupted is finished by the next start, and a deployment a stop
interrupted is deployed again from its template (or, recorded without one, ends Failed saying so)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.gallery import ImageDefinition
from overhaul.core.model import ScaleSetRef
from overhaul.core.resources import RESOURCE_GROUP_TYPE, Resource, parse_resource_group
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import FAST, small, version

DEPLOYMENT = "Microsoft.Resources/deployments"


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


VNET_TEMPLATE = {
    "parameters": {"vnet": {"type": "string"}},
    "resources": [
        {
            "type": "Microsoft.Network/virtualNetworks",
            "apiVersion": "2022-01-01",
            "name": "[parameters('vnet')]",
            "location": "[resourceGroup().location]",
            "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}},
        }
    ],
    "outputs": {"Network": {"type": "string", "value": "[parameters('vnet')]"}},
}


async def test_a_deployment_a_stop_interrupted_is_deployed_again_or_ends_failed_without_its_template(
    tmp_path: Path,
) -> None:
    driver = MemoryDriver()
    first, store = await seeded(tmp_path / "overhaul.db", driver)
    await first.resource_groups.put(parse_resource_group({"location": "local"}, subscription="s1", name="g"))
    # What a stop between recording a deployment and deploying it leaves: Running, nothing made yet.
    running = {"name": "d", "properties": {"provisioningState": "Running", "parameters": {"vnet": {"value": "v1"}}}}
    await store.put_resource(Resource("s1", "g", DEPLOYMENT, "d", running | {"template": VNET_TEMPLATE}))
    await store.put_resource(
        Resource("s1", "g", DEPLOYMENT, "old", {"name": "old", "properties": running["properties"]})
    )
    await first.close()
    await store.close()

    again, store = await seeded(tmp_path / "overhaul.db", driver)
    try:
        deployment = await again.deployments.get("s1", "g", "d")
        await again.deployments.wait(deployment.id, timeout=30)
        props = (await again.deployments.get("s1", "g", "d")).doc["properties"]
        assert props["provisioningState"] == "Succeeded", props
        assert props["outputs"] == {"network": {"type": "string", "value": "v1"}}
        network = "/subscriptions/s1/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v1"
        assert props["outputResources"] == [{"id": network}]
        assert await store.get_resource(network) is not None
        old = (await again.deployments.get("s1", "g", "old")).doc["properties"]
        assert old["provisioningState"] == "Failed" and old["error"]["code"] == "DeploymentInterrupted", old
    finally:
        await again.close()
        await store.close()
