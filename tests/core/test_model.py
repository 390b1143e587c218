"""Scale set model and gallery: Azure's shape and defaults, errors with field paths, latest resolution."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from overhaul.core.arm_json import ModelError, format_duration, parse_duration
from overhaul.core.auto_upgrade import AutoUpgradeSettings, DueUpgrade, due_upgrade
from overhaul.core.gallery import ImageDefinition, ImageVersion, latest_version, parse_image_version, resolve
from overhaul.core.lifecycle_hooks import HookAction, HookType, LifecycleHook
from overhaul.core.model import RollingUpgradePolicy, check_new_model, parse_scale_set
from overhaul.core.rollout import Attempt, AttemptStatus, StartedBy, start
from tests.builders import MODEL_BASE


def with_path(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MODEL_BASE)
    *parents, leaf = path.split(".")
    target = doc
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value
    return doc


def test_azure_defaults() -> None:
    model = parse_scale_set(MODEL_BASE, name="web")
    rolling = model.upgrade_policy.rolling
    assert (rolling.max_batch_instance_percent, rolling.max_unhealthy_instance_percent) == (20, 20)
    assert rolling.max_unhealthy_upgraded_instance_percent == 20
    assert rolling.pause_time_between_batches == 0
    assert rolling.instance_health_timeout == 300
    assert not rolling.prioritize_unhealthy_instances
    auto = model.upgrade_policy.automatic
    assert not auto.enable_automatic_os_upgrade and not auto.disable_automatic_rollback
    assert model.image_reference.is_latest
    assert model.data_disks[0].mount_path == "/datadisks/lun0"
    assert model.instance_name(3) == "web_3"


def test_round_trip() -> None:
    model = parse_scale_set(MODEL_BASE, name="web")
    again = parse_scale_set(model.to_json(), name="web")
    assert again == model and again.to_json() == model.to_json()


def test_an_azure_document_comes_back_as_it_was_sent() -> None:
    """Every field either acts or round-trips verbatim: an `az vmss show` document, PUT, comes back the same."""
    sent = {
        "location": "local",
        "tags": {"env": "prod"},
        "sku": {"name": "Standard_D2s_v3", "tier": "Standard", "capacity": 2},
        "zones": ["1"],
        "properties": {
            "singlePlacementGroup": True,
            "overprovision": False,
            "doNotRunExtensionsOnOverprovisionedVMs": False,
            "platformFaultDomainCount": 5,
            "orchestrationMode": "Uniform",
            "upgradePolicy": {
                "mode": "Rolling",
                "rollingUpgradePolicy": {
                    "maxBatchInstancePercent": 20,
                    "maxUnhealthyInstancePercent": 20,
                    "maxUnhealthyUpgradedInstancePercent": 20,
                    "pauseTimeBetweenBatches": "PT0S",
                    "prioritizeUnhealthyInstances": False,
                    "maxSurge": False,
                    "rollbackFailedInstancesOnPolicyBreach": False,
                },
                "automaticOSUpgradePolicy": {
                    "enableAutomaticOSUpgrade": True,
                    "disableAutomaticRollback": False,
                    "useRollingUpgradePolicy": False,
                    "osRollingUpgradeDeferral": False,
                },
            },
            "virtualMachineProfile": {
                "osProfile": {
                    "computerNamePrefix": "webvm",
                    "adminUsername": "azureuser",
                    "linuxConfiguration": {
                        "disablePasswordAuthentication": True,
                        "ssh": {
                            "publicKeys": [{"path": "/home/azureuser/.ssh/authorized_keys", "keyData": "ssh-rsa A"}]
                        },
                        "provisionVMAgent": True,
                    },
                    "secrets": [],
                    "allowExtensionOperations": True,
                },
                "storageProfile": {
                    "osDisk": {
                        "osType": "Linux",
                        "createOption": "FromImage",
                        "caching": "ReadWrite",
                        "managedDisk": {"storageAccountType": "Premium_LRS"},
                        "diskSizeGB": 30,
                    },
                    "imageReference": {"publisher": "p", "offer": "o", "sku": "s", "version": "latest"},
                    "dataDisks": [
                        {
                            "lun": 0,
                            "createOption": "Empty",
                            "caching": "None",
                            "diskSizeGB": 4,
                            "managedDisk": {"storageAccountType": "Standard_LRS"},
                        }
                    ],
                },
                "networkProfile": {
                    "networkInterfaceConfigurations": [
                        {
                            "name": "nic",
                            "properties": {
                                "primary": True,
                                "enableAcceleratedNetworking": False,
                                "ipConfigurations": [
                                    {
                                        "name": "ip",
                                        "properties": {"subnet": {"id": "/subscriptions/s/x/subnets/default"}},
                                    }
                                ],
                            },
                        }
                    ],
                    "healthProbe": {"protocol": "Http", "port": 8080, "requestPath": "/health"},
                },
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
                "priority": "Regular",
            },
        },
    }
    back = parse_scale_set(sent, name="web").to_json()

    def leaves(doc: Any, path: str = "") -> dict[str, Any]:
        if isinstance(doc, dict):
            found: dict[str, Any] = {}
            for key, value in doc.items():
                found.update(leaves(value, f"{path}.{key}" if path else key))
            return found
        if isinstance(doc, list) and doc:
            found = {}
            for i, value in enumerate(doc):
                found.update(leaves(value, f"{path}[{i}]"))
            return found
        return {path: doc}

    returned = leaves(back)
    assert {path: returned.get(path, "<missing>") for path in leaves(sent)} == leaves(sent)


def test_zones_host_group_and_cross_zone_upgrade_are_read() -> None:
    doc = copy.deepcopy(MODEL_BASE)
    doc["zones"] = ["1", "2"]
    group = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/hostGroups/h"
    doc["properties"]["hostGroup"] = {"id": group}
    doc["properties"]["zoneBalance"] = True
    doc["properties"]["upgradePolicy"]["rollingUpgradePolicy"] = {"enableCrossZoneUpgrade": True}
    model = parse_scale_set(doc, name="web")
    assert (model.zones, model.host_group, model.zone_balance) == (("1", "2"), group, True)
    assert model.upgrade_policy.rolling.enable_cross_zone_upgrade
    for zones in (["1", "1"], "1", [""]):
        with pytest.raises(ModelError) as caught:
            parse_scale_set({**doc, "zones": zones}, name="web")
        assert caught.value.path == "zones"


def test_lifecycle_hooks_are_parsed_with_azure_defaults_and_round_trip() -> None:
    doc = copy.deepcopy(MODEL_BASE)
    batch = {"type": "UpgradeAutoOSRollingBatchStarting", "waitDuration": "PT20M", "defaultAction": "Reject"}
    doc["properties"]["lifecycleHooksProfile"] = {"lifecycleHooks": [batch, {"type": "upgradeautoosscheduling"}]}
    model = parse_scale_set(doc, name="web")
    assert model.lifecycle_hook(HookType.BATCH_STARTING) == LifecycleHook(
        HookType.BATCH_STARTING, 1200, HookAction.REJECT
    )
    assert model.lifecycle_hook(HookType.SCHEDULING) == LifecycleHook(HookType.SCHEDULING, 1800, HookAction.APPROVE)
    assert model.to_json()["properties"]["lifecycleHooksProfile"]["lifecycleHooks"][0] == batch
    doc["properties"]["lifecycleHooksProfile"] = {"lifecycleHooks": []}
    assert parse_scale_set(doc, name="web").lifecycle_hooks == ()


@pytest.mark.parametrize(
    ("hook", "path"),
    [
        ({"type": "UpgradeAutoOSSomething"}, "[0].type"),
        ({"waitDuration": "PT1M"}, "[0].type"),
        ({"type": "UpgradeAutoOSScheduling", "waitDuration": "soon"}, "[0].waitDuration"),
        ({"type": "UpgradeAutoOSScheduling", "waitDuration": "PT0S"}, "[0].waitDuration"),
        ({"type": "UpgradeAutoOSScheduling", "waitDuration": "P8D"}, "[0].waitDuration"),
        ({"type": "UpgradeAutoOSScheduling", "defaultAction": "Maybe"}, "[0].defaultAction"),
        ("UpgradeAutoOSScheduling", "[0]"),
    ],
)
def test_a_wrong_lifecycle_hook_is_refused_naming_the_field(hook: Any, path: str) -> None:
    doc = copy.deepcopy(MODEL_BASE)
    doc["properties"]["lifecycleHooksProfile"] = {"lifecycleHooks": [hook]}
    with pytest.raises(ModelError) as caught:
        parse_scale_set(doc, name="web")
    assert caught.value.path == f"properties.lifecycleHooksProfile.lifecycleHooks{path}"


def test_a_lifecycle_hook_type_named_twice_is_refused() -> None:
    doc = copy.deepcopy(MODEL_BASE)
    hooks = [{"type": "UpgradeAutoOSScheduling"}, {"type": "UpgradeAutoOSScheduling", "waitDuration": "PT5M"}]
    doc["properties"]["lifecycleHooksProfile"] = {"lifecycleHooks": hooks}
    with pytest.raises(ModelError, match="named twice") as caught:
        parse_scale_set(doc, name="web")
    assert caught.value.path == "properties.lifecycleHooksProfile.lifecycleHooks[1].type"


def test_max_surge_is_carried_out_and_round_trips() -> None:
    doc = copy.deepcopy(MODEL_BASE)
    doc["properties"]["upgradePolicy"]["rollingUpgradePolicy"] = {"maxSurge": True}
    model = parse_scale_set(doc, name="web")
    assert model.upgrade_policy.rolling.max_surge
    assert model.to_json()["properties"]["upgradePolicy"]["rollingUpgradePolicy"]["maxSurge"] is True
    doc["properties"]["upgradePolicy"]["rollingUpgradePolicy"] = {"maxSurge": "yes"}
    with pytest.raises(ModelError, match="true or false") as caught:
        parse_scale_set(doc, name="web")
    assert caught.value.path == "properties.upgradePolicy.rollingUpgradePolicy.maxSurge"


RP = "properties.upgradePolicy.rollingUpgradePolicy"


@pytest.mark.parametrize(
    ("path", "value", "error_path", "text"),
    [
        (f"{RP}.maxBatchInstancePercent", 4, f"{RP}.maxBatchInstancePercent", "must be 5..100"),
        (f"{RP}.maxBatchInstancePercent", "20", f"{RP}.maxBatchInstancePercent", "whole number"),
        (f"{RP}.maxUnhealthyInstancePercent", 101, f"{RP}.maxUnhealthyInstancePercent", "5..100"),
        (
            f"{RP}.maxUnhealthyUpgradedInstancePercent",
            -1,
            f"{RP}.maxUnhealthyUpgradedInstancePercent",
            "0..100",
        ),
        (f"{RP}.pauseTimeBetweenBatches", "5 minutes", f"{RP}.pauseTimeBetweenBatches", "ISO 8601"),
        (f"{RP}.pauseTimeBetweenBatches", "PT2H", f"{RP}.pauseTimeBetweenBatches", "PT1H"),
        (f"{RP}.prioritizeUnhealthyInstances", "yes", f"{RP}.prioritizeUnhealthyInstances", "true or false"),
        ("properties.upgradePolicy.mode", "Sometimes", "properties.upgradePolicy.mode", "Automatic"),
        ("sku.capacity", -1, "sku.capacity", "0..10000"),
        ("sku.capacity", None, "sku.capacity", "required"),
        (
            "properties.virtualMachineProfile.storageProfile.imageReference",
            {"publisher": "p", "offer": "o", "sku": "s", "version": "v1"},
            "properties.virtualMachineProfile.storageProfile.imageReference.version",
            "MAJOR.MINOR.PATCH",
        ),
        (
            "properties.virtualMachineProfile.storageProfile.imageReference",
            {"publisher": "p", "offer": "o"},
            "properties.virtualMachineProfile.storageProfile.imageReference.sku",
            "required",
        ),
        (
            "properties.virtualMachineProfile.storageProfile.dataDisks",
            [{"lun": 0}, {"lun": 0}],
            "properties.virtualMachineProfile.storageProfile.dataDisks[1].lun",
            "duplicate",
        ),
        (
            "properties.virtualMachineProfile.overhaul",
            {"ports": [0]},
            "properties.virtualMachineProfile.overhaul.ports[0]",
            "port",
        ),
        ("tags", {"a": 1}, "tags", "strings"),
    ],
)
def test_errors_name_the_field(path: str, value: Any, error_path: str, text: str) -> None:
    with pytest.raises(ModelError) as err:
        parse_scale_set(with_path(path, value), name="web")
    assert err.value.path == error_path
    assert text in err.value.message


def test_bad_name() -> None:
    with pytest.raises(ModelError, match="name:"):
        parse_scale_set(MODEL_BASE, name="no spaces")


@pytest.mark.parametrize(("text", "seconds"), [("PT0S", 0), ("PT5M", 300), ("PT1H30M", 5400), ("P1D", 86400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds
    assert parse_duration(format_duration(seconds), "x") == seconds


def version(v: str, *, exclude: bool = False, locations: tuple[str, ...] = ("local",)) -> ImageVersion:
    return ImageVersion("g", "demo", v, f"localhost/demo:{v}", exclude_from_latest=exclude, target_locations=locations)


def test_latest_is_highest_semver_not_excluded_in_location() -> None:
    versions = [
        version("1.2.0"),
        version("1.10.0"),
        version("2.0.0", exclude=True),
        version("1.11.0", locations=("edge",)),
    ]
    assert latest_version(versions, "local") == versions[1]
    assert latest_version(versions, "edge") == versions[3]
    assert latest_version(versions, "nowhere") is None


def test_resolve_by_publisher_or_gallery_id() -> None:
    definition = ImageDefinition("g", "demo", "overhaul", "demo", "base")
    model = parse_scale_set(MODEL_BASE, name="web")
    assert resolve(model.image_reference, [definition], [version("1.0.0")], "local").version == "1.0.0"
    by_id = with_path(
        "properties.virtualMachineProfile.storageProfile.imageReference",
        {
            "id": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/galleries/g/images/demo"
            + "/versions/1.0.0"
        },
    )
    ref = parse_scale_set(by_id, name="web").image_reference
    assert ref.version == "1.0.0"
    assert resolve(ref, [definition], [version("1.0.0"), version("1.1.0")], "local").version == "1.0.0"
    with pytest.raises(ModelError, match="not available in edge"):
        resolve(ref, [definition], [version("1.0.0")], "edge")


def test_image_version_body() -> None:
    doc = {
        "location": "local",
        "properties": {
            "publishingProfile": {
                "excludeFromLatest": True,
                "targetRegions": [{"name": "local"}, {"name": "edge"}],
            },
            "storageProfile": {"source": {"overhaul": {"containerImage": "localhost/demo:2"}}},
        },
    }
    parsed = parse_image_version(doc, gallery="g", image="demo", version="2.0.0", published_at=1.0)
    assert parsed.exclude_from_latest and parsed.target_locations == ("local", "edge")
    with pytest.raises(ModelError) as err:
        parse_image_version({"properties": {}}, gallery="g", image="demo", version="2.0.0", published_at=1.0)
    assert err.value.path == "properties.storageProfile.source.overhaul.containerImage"
    with pytest.raises(ModelError, match=r"MAJOR\.MINOR\.PATCH"):
        parse_image_version(doc, gallery="g", image="demo", version="latest", published_at=1.0)


def test_automatic_os_upgrades_need_version_latest() -> None:
    doc: dict[str, Any] = {
        "sku": {"capacity": 1},
        "properties": {
            "upgradePolicy": {"mode": "Automatic", "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True}},
            "virtualMachineProfile": {
                "storageProfile": {"imageReference": {"publisher": "p", "offer": "o", "sku": "s", "version": "1.0.0"}},
                "networkProfile": {"healthProbe": {"protocol": "Tcp", "port": 80}},
            },
        },
    }
    with pytest.raises(ModelError, match="version set to 'latest'") as caught:
        check_new_model(parse_scale_set(doc, name="web"))
    assert caught.value.path == "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade"
    doc["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["version"] = "latest"
    check_new_model(parse_scale_set(doc, name="web"))


def test_automatic_os_upgrades_need_a_health_source_or_the_explicit_opt_out() -> None:
    doc: dict[str, Any] = {
        "sku": {"capacity": 1},
        "properties": {
            "upgradePolicy": {"mode": "Automatic", "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True}},
            "virtualMachineProfile": {
                "storageProfile": {"imageReference": {"publisher": "p", "offer": "o", "sku": "s", "version": "latest"}}
            },
        },
    }
    with pytest.raises(ModelError, match="requires an application health probe") as caught:
        check_new_model(parse_scale_set(doc, name="web"))
    assert caught.value.path == "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade"
    doc["properties"]["virtualMachineProfile"]["overhaul"] = {"healthFromPowerState": True}
    check_new_model(parse_scale_set(doc, name="web"))


def test_a_model_upgrade_onto_the_latest_version_is_no_try_of_it() -> None:
    """Automatic OS upgrades do not retry a version an OS upgrade already tried; a model upgrade that happened to
    target the same version was not such a try."""
    doc = copy.deepcopy(MODEL_BASE)
    doc["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"] = {"enableAutomaticOSUpgrade": True}
    doc["properties"]["virtualMachineProfile"]["overhaul"] = {"healthFromPowerState": True}
    model = parse_scale_set(doc, name="web")
    definition = ImageDefinition("g", "demo", "overhaul", "demo", "base")

    def tried(target_model_digest: str | None) -> Attempt:
        attempt = start(
            attempt_id="a",
            scale_set="web",
            target_version="2.0.0",
            started_by=StartedBy.USER,
            disable_automatic_rollback=False,
            policy=RollingUpgradePolicy(),
            capacity=5,
            views={},
            now=0.0,
            target_model_digest=target_model_digest,
        )
        return attempt.finished(AttemptStatus.FAULTED, 1.0)

    def due(attempt: Attempt) -> DueUpgrade | None:
        return due_upgrade(
            model,
            definitions=[definition],
            versions=[version("1.0.0"), version("2.0.0")],
            instance_versions=["1.0.0"] * 5,
            attempts=[attempt],
            settings=AutoUpgradeSettings(),
        )

    assert due(tried(None)) is None
    found = due(tried("digest"))
    assert found is not None and found.target.version == "2.0.0"
