"""The real az (azure-cli from PyPI, tests/azcli.py) drives `overhaul serve` on real Podman with nothing but what
overhaul ships: `--tls auto`, and the lines `overhaul az-login` prints (cloud registration from /metadata/endpoints,
`az login --identity` through the managed identity endpoint). Each command's effect is checked through the API."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from demo import busybox_images as engine_images
from tests.azcli import Az, signed_in_az
from tests.engines import podman_inspect
from tests.serve import Served, overhaul_serve

# Each az call is a Python process importing azure-cli: seconds of CPU each, minutes for a test of twenty calls on a
# busy machine (a full run beside a CPU hog took 120 s for one).
pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(600)]
REPO = "localhost/overhaul-az"
RG, GALLERY, IMAGE, NAME = "azrg", "azgallery", "tiny", "azset"
SUB = "local"
PROVIDER = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers"
VMSS = f"{PROVIDER}/Microsoft.Compute/virtualMachineScaleSets/{NAME}"
VERSIONS = f"{PROVIDER}/Microsoft.Compute/galleries/{GALLERY}/images/{IMAGE}/versions"
LB = f"{PROVIDER}/Microsoft.Network/loadBalancers/azlb"
IMAGES = f"{PROVIDER}/Microsoft.Compute/images"
# Given, so az writes no key of its own under ~/.ssh.
SSH_KEY = "'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHSiqcZGNSd6DI0v8Zo5DIb7d9jJm9CoRN0yG3oJbd8J test'"
API = "api-version=2024-07-01"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    for version in ("1.0.0", "2.0.0", "2.1.0", "3.0.0"):
        engine_images.build("podman", f"{REPO}:{version}", version)
    state = tmp_path_factory.mktemp("az") / "state"
    # Automatic upgrades wait an hour: the tests start each attempt themselves.
    flags = ("--engine", "podman", "--tls", "auto", "--probe-interval", "0.2", "--auto-upgrade-first-delay", "3600")
    with overhaul_serve(state, *flags, "--auto-upgrade-delay", "3600") as running:
        try:
            yield running
        finally:
            running.delete(f"{VMSS}?{API}")  # when a test failed before the group's deletion


@pytest.fixture(scope="module")
def az(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Az:
    return signed_in_az(served, tmp_path_factory.mktemp("azure-config"))


def publish(served: Served, version: str) -> None:
    body = {
        "location": "local",
        "properties": {
            "publishingProfile": {"targetRegions": [{"name": "local"}]},
            "storageProfile": {"source": {"overhaul": {"containerImage": f"{REPO}:{version}"}}},
        },
    }
    status, doc, _ = served.call("PUT", f"{VERSIONS}/{version}?{API}", body, make_group=False)
    assert status in (200, 201), doc


def instances(served: Served) -> list[dict[str, Any]]:
    status, doc, _ = served.call("GET", f"{VMSS}/virtualMachines?{API}")
    assert status == 200, doc
    return list(doc["value"])


def wait_healthy(served: Served, version: str, timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = instances(served)
        seen = [
            (
                i["properties"]["instanceView"].get("vmHealth", {}).get("status", {}).get("code"),
                i["properties"]["storageProfile"]["imageReference"].get("exactVersion"),
            )
            for i in found
        ]
        if seen and all(s == ("HealthState/healthy", version) for s in seen):
            return found
        assert time.monotonic() < deadline, f"instances not healthy on {version}: {seen}"
        time.sleep(0.3)


def first_version_on_data_disk(instance: dict[str, Any]) -> str:
    """What the instance's app wrote on its data disk when it first started (the image's START)."""
    view = instance["properties"]["overhaul"]
    address = f"{view['address']}:{view['hostPorts']['8080']}"
    with urllib.request.urlopen(f"http://{address}/data/first", timeout=10) as resp:
        return str(resp.read().decode().strip())


def container_id(name: str) -> str:
    return podman_inspect(name, "{{.Id}}")


def test_az_signs_in_with_what_overhaul_ships(az: Az, served: Served) -> None:
    account = az("account show")
    assert account["id"] == SUB and account["environmentName"] == "overhaul"
    assert account["user"]["type"] == "servicePrincipal"
    # az's token is overhaul's JWT, whose tenant is the account's.
    token = az("account get-access-token")["accessToken"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["tid"] == account["tenantId"]
    assert served.call("GET", f"{VMSS}?{API}", token=token)[0] == 404  # accepted: the scale set is not there yet


def test_az_drives_a_scale_set_on_podman(az: Az, served: Served) -> None:
    group = az(f"group create -n {RG} -l local")
    assert group["properties"]["provisioningState"] == "Succeeded"
    # Without -l az reads the group's location.
    gallery = az(f"sig create -g {RG} -r {GALLERY}")
    assert gallery["name"] == GALLERY and gallery["provisioningState"] == "Succeeded"
    definition = az(
        f"sig image-definition create -g {RG} -r {GALLERY} -i {IMAGE} --publisher overhaul --offer az "
        "--sku tiny --os-type Linux"
    )
    assert definition["identifier"] == {"publisher": "overhaul", "offer": "az", "sku": "tiny"}
    publish(served, "1.0.0")
    status, doc, _ = served.call("PUT", f"{LB}?{API}", {"location": "local", "properties": {}}, make_group=False)
    assert status == 201, doc
    az(
        f"network lb probe create -g {RG} --lb-name azlb -n app-health --protocol Http --port 8080 --path /health "
        "--interval 5 --probe-threshold 1"
    )
    status, doc, _ = served.call("GET", f"{LB}/probes/app-health?{API}")
    assert status == 200 and doc["properties"]["requestPath"] == "/health", doc
    model = {
        "location": "local",
        "sku": {"name": "Standard_Container", "capacity": 2},
        "properties": {
            # Manual: a model change waits for update-instances.
            "upgradePolicy": {"mode": "Manual", "rollingUpgradePolicy": {"maxBatchInstancePercent": 50}},
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {"publisher": "overhaul", "offer": "az", "sku": "tiny", "version": "latest"},
                    "dataDisks": [{"lun": 0, "createOption": "Empty", "diskSizeGB": 1}],
                },
                "networkProfile": {"healthProbe": {"id": f"{LB}/probes/app-health"}},
            },
        },
    }
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", model, make_group=False)
    assert status == 201, doc
    wait_healthy(served, "1.0.0")

    # The documentation's command, with az's own lower-case path.
    az(f"vmss update -g {RG} -n {NAME} --set upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade=true")
    status, doc, _ = served.call("GET", f"{VMSS}?{API}")
    assert doc["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"]["enableAutomaticOSUpgrade"] is True

    one = az(f"vmss show -g {RG} -n {NAME} --instance-id 0")
    assert one["instanceId"] == "0" and one["name"] == f"{NAME}_0"

    # A version from a managed image, as az makes one (the image holds the container image under overhaul's key).
    image = {"location": "local", "properties": {"overhaul": {"containerImage": f"{REPO}:2.0.0"}}}
    status, doc, _ = served.call("PUT", f"{IMAGES}/base2?{API}", image, make_group=False)
    assert status == 201, doc
    made = az(f"sig image-version create -g {RG} -r {GALLERY} -i {IMAGE} -e 2.0.0 --managed-image base2")
    assert made["provisioningState"] == "Succeeded"
    _, doc, _ = served.call("GET", f"{VERSIONS}/2.0.0?{API}")
    assert doc["properties"]["storageProfile"]["source"]["overhaul"] == {"containerImage": f"{REPO}:2.0.0"}
    # The documentation's listing: az walks publishers, offers, skus and versions of the location.
    images = az("vm image list --publisher overhaul --offer az --sku tiny --all --location local")
    assert [(i["urn"], i["version"]) for i in images] == [
        ("overhaul:az:tiny:1.0.0", "1.0.0"),
        ("overhaul:az:tiny:2.0.0", "2.0.0"),
    ]
    az(f"vmss rolling-upgrade start -g {RG} -n {NAME}")  # waits for the operation's end, as with Azure
    latest = az(f"vmss rolling-upgrade get-latest -g {RG} -n {NAME}")
    assert latest["runningStatus"]["code"] == "Completed", latest
    assert latest["progress"]["successfulInstanceCount"] == 2
    upgraded = wait_healthy(served, "2.0.0")
    history = az(f"vmss get-os-upgrade-history -g {RG} -n {NAME}")
    assert history[0]["properties"]["runningStatus"]["code"] == "Completed"
    assert history[0]["properties"]["targetImageReference"]["version"] == "2.0.0"

    # az re-PUTs what its models kept of the version: overhaul's source is kept, the change made.
    publish(served, "2.1.0")
    az(
        f"sig image-version update -g {RG} -r {GALLERY} -i {IMAGE} -e 2.1.0 "
        "--set publishingProfile.excludeFromLatest=true"
    )
    _, doc, _ = served.call("GET", f"{VERSIONS}/2.1.0?{API}")
    assert doc["properties"]["publishingProfile"]["excludeFromLatest"] is True
    assert doc["properties"]["storageProfile"]["source"]["overhaul"] == {"containerImage": f"{REPO}:2.1.0"}

    # az's reimage of chosen instances is Azure's reimageall: a new OS disk; the data disk is kept here.
    before = container_id(f"{NAME}_0")
    az(f"vmss reimage -g {RG} -n {NAME} --instance-ids 0")
    assert container_id(f"{NAME}_0") != before
    again = wait_healthy(served, "2.0.0")
    assert first_version_on_data_disk(again[0]) == "1.0.0" == first_version_on_data_disk(upgraded[0])


def test_az_cancels_a_rolling_upgrade(az: Az, served: Served) -> None:
    status, doc, _ = served.call(
        "PATCH",
        f"{VMSS}?{API}",
        {"properties": {"upgradePolicy": {"rollingUpgradePolicy": {"pauseTimeBetweenBatches": "PT30S"}}}},
    )
    assert status == 200, doc
    publish(served, "3.0.0")
    az(f"vmss rolling-upgrade start -g {RG} -n {NAME} --no-wait")
    az(f"vmss rolling-upgrade cancel -g {RG} -n {NAME}")
    latest = az(f"vmss rolling-upgrade get-latest -g {RG} -n {NAME}")
    assert latest["runningStatus"]["code"] == "Cancelled", latest


def test_az_updates_instances_to_a_new_model_and_sets_an_extension(az: Az, served: Served) -> None:
    before = [container_id(f"{NAME}_{i}") for i in range(2)]
    custom = base64.b64encode(b"#!/bin/sh\necho model 2\n").decode()
    az(f"vmss update -g {RG} -n {NAME} --set virtualMachineProfile.osProfile.customData={custom}")
    assert [container_id(f"{NAME}_{i}") for i in range(2)] == before  # Manual: the instances wait
    assert not any(i["properties"]["latestModelApplied"] for i in instances(served))
    az(f"vmss update-instances -g {RG} -n {NAME} --instance-ids *")
    assert all(container_id(f"{NAME}_{i}") != was for i, was in enumerate(before))
    assert all(i["properties"]["latestModelApplied"] for i in instances(served))

    settings = json.dumps({"protocol": "http", "port": 8080, "requestPath": "/health"})
    az(
        f"vmss extension set -g {RG} --vmss-name {NAME} -n ApplicationHealthLinux "
        "--publisher Microsoft.ManagedServices --version 1.0",
        "--settings",
        settings,
    )
    _, doc, _ = served.call("GET", f"{VMSS}?{API}")
    extensions = doc["properties"]["virtualMachineProfile"]["extensionProfile"]["extensions"]
    assert [e["properties"]["type"] for e in extensions] == ["ApplicationHealthLinux"]
    assert extensions[0]["properties"]["settings"]["requestPath"] == "/health"
    assert extensions[0]["properties"]["typeHandlerVersion"] == "1.0"
    # Without --version az reads the extension's versions from the catalogue and takes the newest.
    az(
        f"vmss extension set -g {RG} --vmss-name {NAME} -n ApplicationHealthLinux "
        "--publisher Microsoft.ManagedServices",
        "--settings",
        settings,
    )
    _, doc, _ = served.call("GET", f"{VMSS}?{API}")
    [extension] = doc["properties"]["virtualMachineProfile"]["extensionProfile"]["extensions"]
    assert extension["properties"]["typeHandlerVersion"] == "2.0"


def test_az_creates_a_scale_set_and_a_load_balancer_through_template_deployments(az: Az, served: Served) -> None:
    image = f"{PROVIDER}/Microsoft.Compute/galleries/{GALLERY}/images/{IMAGE}"
    created = az(
        f"vmss create -g {RG} -n azmade --image {image} --instance-count 1 --orchestration-mode Uniform "
        "--upgrade-policy-mode automatic --admin-username azureuser --generate-ssh-keys "
        f"--ssh-key-values {SSH_KEY}"
    )
    assert created["vmss"]["upgradePolicy"]["mode"] == "Automatic"  # the deployment's output, as az prints it
    [made] = az(f"vmss list-instances -g {RG} -n azmade")
    assert made["name"] == "azmade_0"
    assert podman_inspect("azmade_0", "{{.State.Running}}") == "true"  # a real container from the gallery's image
    azmade = f"{PROVIDER}/Microsoft.Compute/virtualMachineScaleSets/azmade"

    def health() -> list[tuple[str, str]]:
        return [
            (
                i["properties"]["instanceView"]["vmHealth"]["status"]["code"],
                i["properties"]["instanceView"]["vmHealth"]["status"].get("message", ""),
            )
            for i in served.instances(azmade)
        ]

    # az's template names no probe and no health extension: its health is only whether it runs.
    assert health() == [("HealthState/healthy", "")]
    # Its health from the load balancer az made: a probe on it, named by the model as Azure's documentation does.
    az(
        f"network lb probe create -g {RG} --lb-name azmadeLB -n health --protocol Http --port 8080 --path /health "
        "--interval 5 --probe-threshold 1"
    )
    probe = f"{PROVIDER}/Microsoft.Network/loadBalancers/azmadeLB/probes/health"
    # The model az read has no healthProbe yet: the whole reference is set, as JSON.
    az(f'vmss update -g {RG} -n azmade --set \'virtualMachineProfile.networkProfile.healthProbe={{"id": "{probe}"}}\'')
    deadline = time.monotonic() + 120
    while (seen := health()) != [("HealthState/healthy", "HTTP 200")]:  # now the probe's verdict
        assert time.monotonic() < deadline, f"the az-made instance is not Healthy by its probe: {seen}"
        time.sleep(0.3)
    deployments = az(f"deployment group list -g {RG}")
    assert {d["properties"]["provisioningState"] for d in deployments} == {"Succeeded"}
    # az's scale PUTs only the location and the sku: the rest of the model is kept, and a second instance made.
    scaled = az(f"vmss scale -g {RG} -n azmade --new-capacity 2")
    assert scaled["sku"]["capacity"] == 2 and scaled["upgradePolicy"]["mode"] == "Automatic"
    assert [i["name"] for i in az(f"vmss list-instances -g {RG} -n azmade")] == ["azmade_0", "azmade_1"]
    assert podman_inspect("azmade_1", "{{.State.Running}}") == "true"
    az(f"vmss delete -g {RG} -n azmade")  # a long-running operation az follows to its end
    assert served.call("GET", f"{azmade}?{API}")[0] == 404
    for name in ("azmade_0", "azmade_1"):  # each container was removed before the operation ended
        gone = subprocess.run(["podman", "container", "exists", name], check=False, capture_output=True, timeout=60)
        assert gone.returncode == 1, name
    az(f"network lb create -g {RG} -n azlb2 --sku Standard")
    az(f"network lb probe create -g {RG} --lb-name azlb2 -n health --protocol Tcp --port 8080")
    _, doc, _ = served.call("GET", f"{PROVIDER}/Microsoft.Network/loadBalancers/azlb2/probes/health?{API}")
    assert doc["properties"]["protocol"] == "Tcp"


def test_az_deletes_the_group_and_everything_in_it(az: Az, served: Served) -> None:
    listed = az(f"resource list -g {RG} --resource-type Microsoft.Network/loadBalancers")
    assert [r["name"] for r in listed] == ["azlb", "azlb2", "azmadeLB"]
    assert {r["type"] for r in az(f"resource list -g {RG}")} >= {
        "Microsoft.Compute/virtualMachineScaleSets",
        "Microsoft.Compute/galleries",
        "Microsoft.Compute/images",
    }
    az(f"group delete -n {RG} --yes")  # waits on the operation until the group is gone
    assert az(f"group exists -n {RG}") is False
    for path in (VMSS, LB, VERSIONS.rsplit("/images/", 1)[0]):
        assert served.call("GET", f"{path}?{API}")[0] == 404, path
    left = subprocess.run(
        ["podman", "ps", "-a", "--filter", f"name={NAME}_", "--filter", "name=azmade_", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert left.stdout.split() == []
