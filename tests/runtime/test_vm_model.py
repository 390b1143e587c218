"""VM scale sets in the model, the gallery and the orchestrator: what selects the QEMU driver, and the clear errors
when a model and a gallery version do not match (pure, and the orchestrator over the in-memory driver)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.drivers.router import KindRouter
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.arm_json import ModelError
from overhaul.core.errors import InvalidInput
from overhaul.core.gallery import ImageDefinition, ImageVersion, parse_image_version, resolve
from overhaul.core.model import Accel, VmOptions, check_new_model, parse_scale_set
from overhaul.ports.driver import InstanceSpec, InstanceState, OsDisk
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import MODEL_BASE


def vm_model(vm: Any = None, **profile: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MODEL_BASE)
    doc["properties"]["virtualMachineProfile"]["overhaul"] = {"vm": {} if vm is None else vm}
    doc["properties"]["virtualMachineProfile"].update(profile)
    return doc


def test_vm_options_have_defaults_and_round_trip() -> None:
    model = parse_scale_set(vm_model(), name="vms")
    assert model.is_vm and model.engine.vm == VmOptions(512, 2, Accel.AUTO)
    doc = model.to_json()
    vm = doc["properties"]["virtualMachineProfile"]["overhaul"]["vm"]
    assert vm == {"memoryMB": 512, "vCPUs": 2, "accel": "auto"}
    assert parse_scale_set(doc, name="vms") == model
    sized = parse_scale_set(vm_model({"memoryMB": 1024, "vCPUs": 1, "accel": "TCG"}), name="vms")
    assert sized.engine.vm == VmOptions(1024, 1, Accel.TCG)
    assert not parse_scale_set(MODEL_BASE, name="web").is_vm


@pytest.mark.parametrize(
    ("vm", "overhaul", "path", "text"),
    [
        ({"memoryMB": 64}, {}, "properties.virtualMachineProfile.overhaul.vm.memoryMB", "128..65536"),
        ({"vCPUs": 0}, {}, "properties.virtualMachineProfile.overhaul.vm.vCPUs", "1..64"),
        ({"accel": "hvf"}, {}, "properties.virtualMachineProfile.overhaul.vm.accel", "auto, kvm or tcg"),
        ("big", {}, "properties.virtualMachineProfile.overhaul.vm", "JSON object"),
        ({}, {"command": ["/bin/app"]}, "properties.virtualMachineProfile.overhaul.command", "no meaning for a VM"),
        ({}, {"systemd": True}, "properties.virtualMachineProfile.overhaul.systemd", "no meaning for a VM"),
    ],
)
def test_vm_options_errors_name_the_field(vm: Any, overhaul: dict[str, Any], path: str, text: str) -> None:
    doc = vm_model(vm)
    doc["properties"]["virtualMachineProfile"]["overhaul"].update(overhaul)
    with pytest.raises(ModelError, match=text) as err:
        parse_scale_set(doc, name="vms")
    assert err.value.path == path


def test_what_vms_cannot_do_is_refused() -> None:
    deferral = vm_model()
    deferral["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"] = {"osRollingUpgradeDeferral": True}
    check_new_model(parse_scale_set(deferral, name="vms"))  # notices are pushed to the agent inside
    surge = vm_model()
    surge["properties"]["upgradePolicy"]["rollingUpgradePolicy"] = {"maxSurge": True}
    with pytest.raises(ModelError, match="one VM at a time") as err:
        check_new_model(parse_scale_set(surge, name="vms"))
    assert err.value.path.endswith("maxSurge")
    surge["properties"]["virtualMachineProfile"]["storageProfile"]["dataDisks"] = []
    check_new_model(parse_scale_set(surge, name="vms"))  # without data disks, a VM can surge


def image_version(version: str, container: str = "", disk: str = "") -> ImageVersion:
    return ImageVersion("g", "demo", version, container, published_at=float(version[0]), disk_image=disk)


def test_a_gallery_version_names_a_container_image_a_disk_image_or_both() -> None:
    def parse(source: dict[str, Any]) -> ImageVersion:
        doc = {"properties": {"storageProfile": {"source": {"overhaul": source}}}}
        return parse_image_version(doc, gallery="g", image="demo", version="1.0.0", published_at=1.0)

    both = parse({"containerImage": "localhost/os:1", "diskImage": "/images/vm/1.0.0"})
    assert (both.source_for(vm=False), both.source_for(vm=True)) == ("localhost/os:1", "/images/vm/1.0.0")
    assert both.to_json()["properties"]["storageProfile"]["source"]["overhaul"] == {
        "containerImage": "localhost/os:1",
        "diskImage": "/images/vm/1.0.0",
    }
    assert parse({"diskImage": "/images/vm/1.0.0"}).source_for(vm=False) == ""
    with pytest.raises(ModelError, match="absolute path") as err:
        parse({"diskImage": "images/vm"})
    assert err.value.path == "properties.storageProfile.source.overhaul.diskImage"
    with pytest.raises(ModelError, match="or diskImage"):
        parse({})


def test_latest_for_vms_skips_versions_without_vm_artefacts() -> None:
    definition = ImageDefinition("g", "demo", "overhaul", "demo", "base")
    model = parse_scale_set(vm_model(), name="vms")
    versions = [image_version("1.0.0", "c:1", "/vm/1"), image_version("2.0.0", "c:2")]
    assert resolve(model.image_reference, [definition], versions, "local", vm=True).version == "1.0.0"
    assert resolve(model.image_reference, [definition], versions, "local").version == "2.0.0"
    with pytest.raises(ModelError, match="names no diskImage"):
        resolve(model.image_reference.with_version("2.0.0"), [definition], versions, "local", vm=True)
    with pytest.raises(ModelError, match="with a diskImage"):
        resolve(model.image_reference, [definition], versions[1:], "local", vm=True)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Orchestrator, MemoryDriver]]:
    store = SqliteStore(tmp_path / "overhaul.db")
    driver = MemoryDriver()
    orchestrator = Orchestrator(store, driver, HealthMonitor())
    await orchestrator.start()
    await orchestrator.galleries.put_definition(ImageDefinition("g", "demo", "overhaul", "demo", "base"))
    await orchestrator.galleries.publish(image_version("1.0.0", "localhost/os:1.0.0", "/vm/1.0.0"))
    await orchestrator.galleries.publish(image_version("2.0.0", "localhost/os:2.0.0"))
    yield orchestrator, driver
    await orchestrator.close()
    await store.close()


async def test_a_vm_scale_set_is_made_from_the_disk_image_and_stays_a_vm(
    setup: tuple[Orchestrator, MemoryDriver],
) -> None:
    orchestrator, driver = setup
    doc = vm_model()
    doc["properties"]["upgradePolicy"] = {"mode": "Manual"}
    await orchestrator.scale_sets.put("vms", doc)
    # 2.0.0 has no VM artefacts: the VMs are made from 1.0.0's disk image.
    assert {s.current.image for s in driver.instances["vms"].values() if s.current} == {"/vm/1.0.0"}
    as_container = copy.deepcopy(MODEL_BASE)  # a PUT keeps what it leaves out: removing the VM takes an explicit null
    as_container["properties"]["virtualMachineProfile"].setdefault("overhaul", {})["vm"] = None
    with pytest.raises(InvalidInput, match="cannot be removed") as err:
        await orchestrator.scale_sets.put("vms", as_container)
    assert err.value.target == "properties.virtualMachineProfile.overhaul.vm"
    await orchestrator.scale_sets.put("web", copy.deepcopy(MODEL_BASE))
    with pytest.raises(InvalidInput, match="cannot be added"):
        await orchestrator.scale_sets.put("web", vm_model())
    with pytest.raises(InvalidInput, match="names no diskImage") as err:
        await orchestrator.upgrades.start("vms", version="2.0.0")
    assert err.value.target == "properties.virtualMachineProfile.storageProfile.imageReference.version"


async def test_publishing_checks_each_artefact_it_names(setup: tuple[Orchestrator, MemoryDriver]) -> None:
    orchestrator, driver = setup
    driver.missing_images.add("/vm/missing")
    with pytest.raises(InvalidInput, match="no VM artefacts") as err:
        await orchestrator.galleries.publish(image_version("3.0.0", "localhost/os:3.0.0", "/vm/missing"))
    assert err.value.target == "properties.storageProfile.source.overhaul.diskImage"


async def test_the_router_sends_each_scale_set_to_its_driver() -> None:
    containers, vms = MemoryDriver(), MemoryDriver()
    router = KindRouter(containers, vms)
    vm_spec = InstanceSpec("vms", 0, "/vm/1", "1.0.0", vm=VmOptions())
    await router.ensure_running(vm_spec)
    await router.ensure_running(InstanceSpec("web", 0, "localhost/os:1", "1.0.0"))
    assert set(vms.instances) == {"vms"} and set(containers.instances) == {"web"}
    assert (await router.observe("vms"))[0].current == OsDisk("1.0.0", "/vm/1", True, None)
    assert set(await router.observe("web")) == {0}
    containers.instances["vms"] = {5: InstanceState(5, None)}  # never asked while the VM driver knows the set
    assert set(await router.observe("vms")) == {0}
    vms.missing_images.add("/vm/2")
    assert not await router.image_present("/vm/2", vm=True)
    assert await router.image_present("/vm/2")
