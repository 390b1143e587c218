"""The real Azure SDK for Python (azure-mgmt-compute) drives `overhaul serve` on real Podman with its own methods and
models, ARM's long-running-operation protocol included. Where overhaul needs a field Azure has no model for (the
container image of a version, an inline health probe), the SDK's models carry it as raw JSON, as they allow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute import models as m

from demo import busybox_images as engine_images
from tests.azure import compute_client
from tests.serve import Served, overhaul_serve

pytestmark = [pytest.mark.slow, pytest.mark.engine]
REPO = "localhost/overhaul-sdk"
SUB, RG, GALLERY, IMAGE, NAME = "sdk-sub", "sdk-rg", "gallery", "tiny", "sdkset"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    engine_images.build("podman", f"{REPO}:1.0.0", "1.0.0")
    engine_images.build("podman", f"{REPO}:2.0.0", "2.0.0")
    engine_images.build("podman", f"{REPO}:3.0.0", "3.0.0", healthy=False)
    with overhaul_serve(
        tmp_path_factory.mktemp("sdk") / "state",
        "--engine",
        "podman",
        "--probe-interval",
        "0.2",
        "--auto-upgrade-first-delay",
        "0",
        "--auto-upgrade-delay",
        "0",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[ComputeManagementClient]:
    served.make_group(SUB, RG)  # az group create (azure-mgmt-resource is not a dependency)
    compute = compute_client(served, SUB)
    try:
        yield compute
    finally:
        compute.virtual_machine_scale_sets.begin_delete(RG, NAME).result()
        compute.close()


def publish(
    client: ComputeManagementClient, version: str, image: str | None = None, definition: str = IMAGE
) -> m.GalleryImageVersion:
    source = m.GalleryArtifactVersionFullSource({"overhaul": {"containerImage": f"{REPO}:{image or version}"}})
    body = m.GalleryImageVersion(
        location="local",
        properties=m.GalleryImageVersionProperties(
            publishing_profile=m.GalleryImageVersionPublishingProfile(target_regions=[m.TargetRegion(name="local")]),
            storage_profile=m.GalleryImageVersionStorageProfile(source=source),
        ),
    )
    return client.gallery_image_versions.begin_create_or_update(RG, GALLERY, definition, version, body).result()


def wait_healthy(client: ComputeManagementClient, timeout: float = 60, name: str = NAME, count: int = 3) -> None:
    """Until every instance's health, as the SDK reads it from the instance view, is healthy."""
    deadline = time.monotonic() + timeout
    while True:
        states = [
            vm.instance_view.vm_health.status.code
            for vm in client.virtual_machine_scale_set_vms.list(RG, name)
            if vm.instance_view and vm.instance_view.vm_health and vm.instance_view.vm_health.status
        ]
        if len(states) == count and set(states) == {"HealthState/healthy"}:
            return
        assert time.monotonic() < deadline, f"instances not healthy: {states}"
        time.sleep(0.2)


LB_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/loadBalancers/sdk-lb"


def scale_set() -> m.VirtualMachineScaleSet:
    # Azure's documented shape: the scale set names a probe of a load balancer.
    probe = m.ApiEntityReference(id=f"{LB_ID}/probes/app-health")
    return m.VirtualMachineScaleSet(
        location="local",
        sku=m.Sku(name="Standard_Container", capacity=3),
        properties=m.VirtualMachineScaleSetProperties(
            upgrade_policy=m.UpgradePolicy(
                mode="Rolling",
                # overhaul's own health deadline rides along as raw JSON: a bad version is rolled back in seconds.
                rolling_upgrade_policy=m.RollingUpgradePolicy(
                    {"maxBatchInstancePercent": 34, "overhaul": {"instanceHealthTimeout": "PT6S"}}
                ),
            ),
            virtual_machine_profile=m.VirtualMachineScaleSetVMProfile(
                storage_profile=m.VirtualMachineScaleSetStorageProfile(
                    image_reference=m.ImageReference(publisher="overhaul", offer="sdk", sku="tiny", version="latest"),
                    data_disks=[m.VirtualMachineScaleSetDataDisk(lun=0, create_option="Empty", disk_size_gb=1)],
                ),
                network_profile=m.VirtualMachineScaleSetNetworkProfile(health_probe=probe),
            ),
        ),
    )


def put_balancer(served: Served) -> None:
    # The load balancer as `az network lb create` + `az network lb probe create` write it (azure-mgmt-network is
    # not a dependency: its REST call, verbatim).
    balancer = {
        "location": "local",
        "sku": {"name": "Standard"},
        "properties": {
            "probes": [
                {
                    "name": "app-health",
                    "properties": {
                        "protocol": "Http",
                        "port": 8080,
                        "requestPath": "/health",
                        "intervalInSeconds": 5,
                        "numberOfProbes": 1,
                    },
                }
            ]
        },
    }
    status, doc, _ = served.call("PUT", f"{LB_ID}?api-version=2023-09-01", balancer)
    assert status in (200, 201), doc


def test_the_azure_sdk_drives_a_rolling_upgrade_end_to_end(client: ComputeManagementClient, served: Served) -> None:
    gallery = client.galleries.begin_create_or_update(
        RG, GALLERY, m.Gallery(location="local", properties=m.GalleryProperties(description="the SDK's"))
    ).result()
    assert gallery.name == GALLERY and gallery.properties is not None
    assert gallery.properties.description == "the SDK's" and gallery.properties.provisioning_state == "Succeeded"
    assert [g.name for g in client.galleries.list_by_resource_group(RG)] == [GALLERY]
    identifier = m.GalleryImageIdentifier(publisher="overhaul", offer="sdk", sku="tiny")
    definition = client.gallery_images.begin_create_or_update(
        RG,
        GALLERY,
        IMAGE,
        m.GalleryImage(
            location="local",
            properties=m.GalleryImageProperties(os_type="Linux", os_state="Generalized", identifier=identifier),
        ),
    ).result()
    assert definition.identifier is not None and definition.identifier.sku == "tiny"
    assert publish(client, "1.0.0").name == "1.0.0"
    put_balancer(served)

    created = client.virtual_machine_scale_sets.begin_create_or_update(RG, NAME, scale_set()).result()
    assert created.sku is not None and created.sku.capacity == 3
    assert created.provisioning_state == "Succeeded"
    profile = created.virtual_machine_profile
    assert profile is not None and profile.network_profile is not None
    assert profile.network_profile.health_probe is not None
    assert profile.network_profile.health_probe.id == f"{LB_ID}/probes/app-health"
    in_use = served.call("DELETE", f"{LB_ID}?api-version=2023-09-01")
    assert in_use[0] == 409 and in_use[1]["error"]["code"] == "LoadBalancerInUseByVirtualMachineScaleSet", in_use
    assert client.virtual_machine_scale_sets.get(RG, NAME).name == NAME
    assert [s.name for s in client.virtual_machine_scale_sets.list(RG)] == [NAME]
    assert len(list(client.virtual_machine_scale_set_vms.list(RG, NAME))) == 3

    wait_healthy(client)
    publish(client, "2.0.0")
    images = client.virtual_machine_images.list("local", "overhaul", "sdk", "tiny")
    assert [i.name for i in images] == ["1.0.0", "2.0.0"]
    # Returns when the attempt ends, following the operation resource.
    client.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(RG, NAME).result()
    latest = client.virtual_machine_scale_set_rolling_upgrades.get_latest(RG, NAME)
    assert latest.running_status is not None and latest.running_status.code == "Completed"
    assert latest.progress is not None and latest.progress.successful_instance_count == 3

    wait_healthy(client)
    publish(client, "2.1.0", image="2.0.0")
    client.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(RG, NAME, polling=False).result()
    client.virtual_machine_scale_set_rolling_upgrades.begin_cancel(RG, NAME).result()  # returns once it has stopped
    cancelled = client.virtual_machine_scale_set_rolling_upgrades.get_latest(RG, NAME)
    assert cancelled.running_status is not None and cancelled.running_status.code == "Cancelled"

    wait_healthy(client)
    publish(client, "3.0.0")  # never healthy: the attempt faults, and the SDK raises as with Azure
    with pytest.raises(HttpResponseError):
        client.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(RG, NAME).result()
    history = list(client.virtual_machine_scale_sets.get_os_upgrade_history(RG, NAME))
    assert [h.properties.running_status.code for h in history if h.properties and h.properties.running_status] == [
        "Faulted",
        "Cancelled",
        "Completed",
    ]

    updated = client.virtual_machine_scale_sets.begin_update(
        RG, NAME, m.VirtualMachineScaleSetUpdate(tags={"owner": "sdk"})
    ).result()
    assert updated.tags == {"owner": "sdk"}
    client.virtual_machine_scale_sets.begin_reimage(RG, NAME).result()
    versions = {
        vm.storage_profile.image_reference.exact_version for vm in client.virtual_machine_scale_set_vms.list(RG, NAME)
    }
    # A reimage takes the model's image ('latest'), not health-gated, as in Azure; 'latest' skips 3.0.0, which
    # the attempt above quarantined.
    assert versions == {"2.1.0"}
    model_upgrades(client)


def model_upgrades(client: ComputeManagementClient) -> None:
    # Model upgrades: the mode is Rolling, so a new customData rolls out by itself, health-gated; an instance whose
    # OS disk has the latest model needs nothing from update_instances.
    wait_healthy(client)
    client.virtual_machine_scale_sets.begin_update(
        RG,
        NAME,
        m.VirtualMachineScaleSetUpdate(
            properties=m.VirtualMachineScaleSetUpdateProperties(
                virtual_machine_profile=m.VirtualMachineScaleSetUpdateVMProfile(
                    os_profile=m.VirtualMachineScaleSetUpdateOSProfile(custom_data="bmV3")
                )
            )
        ),
    ).result()
    deadline = time.monotonic() + 120
    while (status := rolling_status(client)) == "RollingForward":
        assert time.monotonic() < deadline, "the model upgrade did not end"
        time.sleep(0.2)
    assert status == "Completed"
    assert all(vm.latest_model_applied for vm in client.virtual_machine_scale_set_vms.list(RG, NAME))
    client.virtual_machine_scale_sets.begin_update_instances(
        RG, NAME, m.VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=["0"])
    ).result()
    assert rolling_status(client) == "Completed"


def rolling_status(client: ComputeManagementClient, name: str = NAME) -> str | None:
    latest = client.virtual_machine_scale_set_rolling_upgrades.get_latest(RG, name)
    return latest.running_status.code if latest.running_status is not None else None


HOOKED = "hooked"


def hooked_scale_set() -> m.VirtualMachineScaleSet:
    """Automatic OS upgrades, one instance per batch, each batch waiting for its lifecycle hook event."""
    doc = scale_set()
    assert doc.properties is not None and doc.sku is not None and doc.properties.virtual_machine_profile is not None
    doc.sku.capacity = 2
    storage = doc.properties.virtual_machine_profile.storage_profile
    assert storage is not None
    storage.image_reference = m.ImageReference(publisher="overhaul", offer="sdk", sku="hooks", version="latest")
    storage.data_disks = []
    doc.properties.upgrade_policy = m.UpgradePolicy(
        mode="Rolling",
        automatic_os_upgrade_policy=m.AutomaticOSUpgradePolicy(enable_automatic_os_upgrade=True),
        rolling_upgrade_policy=m.RollingUpgradePolicy({"maxBatchInstancePercent": 50}),
    )
    hook = m.LifecycleHook(
        type="UpgradeAutoOSRollingBatchStarting", wait_duration=timedelta(minutes=10), default_action="Approve"
    )
    doc.properties.lifecycle_hooks_profile = m.LifecycleHooksProfile(lifecycle_hooks=[hook])
    return doc


def active_event(client: ComputeManagementClient, batch: int) -> m.VMScaleSetLifecycleHookEvent:
    events = client.virtual_machine_scale_set_life_cycle_hook_events
    deadline = time.monotonic() + 120
    while True:
        for event in events.list(RG, HOOKED):
            props = event.properties
            if props is not None and props.state == "Active" and props.target_resources:
                return event
        assert time.monotonic() < deadline, f"no active lifecycle hook event for batch {batch}"
        time.sleep(0.2)


def answer(
    client: ComputeManagementClient, event: m.VMScaleSetLifecycleHookEvent, state: str
) -> m.VMScaleSetLifecycleHookEvent:
    assert event.name is not None and event.properties is not None and event.properties.target_resources
    targets = [
        m.VMScaleSetLifecycleHookEventTargetResource(resource=t.resource, action_state=state)
        for t in event.properties.target_resources
    ]
    update = m.VMScaleSetLifecycleHookEventUpdate(
        properties=m.VMScaleSetLifecycleHookEventProperties(target_resources=targets)
    )
    return client.virtual_machine_scale_set_life_cycle_hook_events.update(RG, HOOKED, event.name, update)


def test_the_azure_sdk_answers_lifecycle_hook_events_of_an_automatic_upgrade(
    client: ComputeManagementClient, served: Served
) -> None:
    client.galleries.begin_create_or_update(RG, GALLERY, m.Gallery(location="local")).result()
    identifier = m.GalleryImageIdentifier(publisher="overhaul", offer="sdk", sku="hooks")
    properties = m.GalleryImageProperties(os_type="Linux", os_state="Generalized", identifier=identifier)
    client.gallery_images.begin_create_or_update(
        RG, GALLERY, "hooks", m.GalleryImage(location="local", properties=properties)
    ).result()
    publish(client, "1.0.0", definition="hooks")
    put_balancer(served)
    created = client.virtual_machine_scale_sets.begin_create_or_update(RG, HOOKED, hooked_scale_set()).result()
    assert created.lifecycle_hooks_profile is not None and created.lifecycle_hooks_profile.lifecycle_hooks
    assert created.lifecycle_hooks_profile.lifecycle_hooks[0].default_action == "Approve"
    try:
        wait_healthy(client, name=HOOKED, count=2)
        publish(client, "2.0.0", definition="hooks")  # the platform starts the upgrade; batch 1 waits
        first = active_event(client, 1)
        assert first.properties is not None and first.properties.type == "UpgradeAutoOSRollingBatchStarting"
        assert first.properties.default_action == "Approve" and first.properties.wait_until
        [target] = first.properties.target_resources or []
        assert target.action_state == "Waiting" and target.resource is not None
        assert str(target.resource.id).endswith(f"/virtualMachineScaleSets/{HOOKED}/virtualMachines/0")
        versions = {
            vm.instance_id: vm.storage_profile.image_reference.exact_version
            for vm in client.virtual_machine_scale_set_vms.list(RG, HOOKED)
        }
        assert versions == {"0": "1.0.0", "1": "1.0.0"}  # nothing moves before the answer
        approved = answer(client, first, "Approved")
        assert approved.properties is not None and approved.properties.state == "Completed"
        with pytest.raises(HttpResponseError) as refused:
            answer(client, first, "Rejected")  # a Completed event takes no more answers
        assert refused.value.status_code == 409
        second = active_event(client, 2)
        assert second.name != first.name
        answer(client, second, "Rejected")
        deadline = time.monotonic() + 120
        while (status := rolling_status(client, HOOKED)) == "RollingForward":
            assert time.monotonic() < deadline, "the automatic upgrade did not end"
            time.sleep(0.2)
        assert status == "Completed"
        versions = {
            vm.instance_id: vm.storage_profile.image_reference.exact_version
            for vm in client.virtual_machine_scale_set_vms.list(RG, HOOKED)
        }
        assert versions == {"0": "2.0.0", "1": "1.0.0"}  # the rejected instance kept its version
        got = client.virtual_machine_scale_set_life_cycle_hook_events.get(RG, HOOKED, str(second.name))
        assert got.properties is not None and [t.action_state for t in got.properties.target_resources or []] == [
            "Rejected"
        ]
    finally:
        client.virtual_machine_scale_sets.begin_delete(RG, HOOKED).result()
