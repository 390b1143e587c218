"""The REST API and the CLI against a running `overhaul serve` (in-memory engine): Azure's calls, verbatim."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve import API, Served, overhaul_serve

RG = "/subscriptions/subscription_id/resourceGroups/myResourceGroup"
VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/myScaleSet"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/myGallery/images/myImage"
IMAGE_VERSIONS = (
    "/subscriptions/subscription_id/providers/Microsoft.Compute/locations/local/publishers/Canonical"
    "/artifacttypes/vmimage/offers/0001-com-ubuntu-server-jammy/skus/22_04-lts/versions"
)
MODEL: dict[str, Any] = {
    "location": "local",
    "sku": {"name": "Standard_Container", "capacity": 5},
    "properties": {
        "upgradePolicy": {"mode": "Manual"},
        "virtualMachineProfile": {
            "storageProfile": {
                "imageReference": {
                    "publisher": "Canonical",
                    "offer": "0001-com-ubuntu-server-jammy",
                    "sku": "22_04-lts",
                    "version": "latest",
                },
                "dataDisks": [{"lun": 0, "diskSizeGB": 1}],
            },
            # The in-memory engine runs nothing to probe: instances are healthy while they "run".
            "overhaul": {"healthFromPowerState": True},
        },
    },
}


def publish(served: Served, version: str, *, exclude: bool = False) -> None:
    body = {
        "location": "local",
        "properties": {
            "publishingProfile": {"excludeFromLatest": exclude, "targetRegions": [{"name": "local"}]},
            "storageProfile": {"source": {"overhaul": {"containerImage": f"localhost/jammy:{version}"}}},
        },
    }
    status, doc, _ = served.call("PUT", f"{GALLERY}/versions/{version}?{API}", body)
    assert status in (200, 201), doc


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with overhaul_serve(
        tmp_path / "state", "--engine", "memory", "--auto-upgrade-first-delay", "0", "--auto-upgrade-delay", "0"
    ) as running:
        identifier = {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"}
        status, _, _ = running.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})
        assert status == 201
        publish(running, "1.0.0")
        yield running


def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_token_file_is_private_and_required(served: Served) -> None:
    mode = stat.S_IMODE(os.stat(served.state_dir / "token").st_mode)
    assert mode == 0o600
    status, doc, headers = served.call("GET", f"{VMSS}?{API}", token="")
    assert status == 401 and doc["error"]["code"] == "AuthenticationFailed"
    assert headers["WWW-Authenticate"] == "Bearer"
    assert served.call("GET", f"{VMSS}?{API}", token="wrong")[0] == 401
    assert served.call("GET", "/healthz", token="")[0] == 200
    assert served.call("GET", "/metrics", token="")[0] == 200


def test_seed_calls_verbatim(served: Served) -> None:
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", MODEL)
    assert status == 201, doc
    assert doc["type"] == "Microsoft.Compute/virtualMachineScaleSets" and doc["location"] == "local"
    # The seed's call enabling automatic OS upgrades, with PUT and with PATCH.
    enable = {
        "properties": {
            "upgradePolicy": {"mode": "Automatic", "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True}}
        }
    }
    for method in ("PUT", "PATCH"):
        status, doc, _ = served.call(method, f"{VMSS}?api-version=2021-03-01", enable)
        assert status == 200, doc
        policy = doc["properties"]["upgradePolicy"]
        assert policy["automaticOSUpgradePolicy"]["enableAutomaticOSUpgrade"] is True
        assert doc["sku"]["capacity"] == 5  # left out of the body, kept
    status, doc, headers = served.call("POST", f"{VMSS}/osRollingUpgrade?api-version=2021-03-01")
    assert status == 202, doc
    # ARM's long-running-operation protocol: an absolute URL of an operation resource to poll.
    operation = headers["Azure-AsyncOperation"]
    assert operation.startswith(served.url + "/subscriptions/subscription_id/providers/Microsoft.Compute/locations/")
    assert headers["Location"] == operation
    wait_for(lambda: served.call("GET", operation.removeprefix(served.url))[1]["status"] == "Succeeded")
    done = served.call("GET", operation.removeprefix(served.url))[1]
    assert set(done) == {"name", "status", "startTime", "endTime"}
    assert served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")[1]["properties"]["runningStatus"]["code"] == (
        "Completed"
    )
    publish(served, "1.1.0")  # the platform rolls this one out by itself
    wait_for(lambda: len(served.call("GET", f"{VMSS}/osUpgradeHistory?api-version=2021-03-01")[1]["value"]) == 2)
    wait_for(
        lambda: (
            served.call("GET", f"{VMSS}/osUpgradeHistory?{API}")[1]["value"][0]["properties"]["runningStatus"]["code"]
            == "Completed"
        )
    )
    status, doc, _ = served.call("GET", f"{VMSS}/osUpgradeHistory?api-version=2021-03-01")
    assert status == 200
    newest, oldest = doc["value"]
    for record in (newest, oldest):
        props = record["properties"]
        assert set(props) >= {"runningStatus", "progress", "startedBy", "targetImageReference", "rollbackInfo"}
        assert set(props["runningStatus"]) >= {"code", "startTime", "endTime"}
        assert set(props["progress"]) == {
            "successfulInstanceCount",
            "failedInstanceCount",
            "inProgressInstanceCount",
            "pendingInstanceCount",
        }
        assert set(props["rollbackInfo"]) >= {"successfullyRolledbackInstanceCount", "failedRolledbackInstanceCount"}
        assert record["type"] == "Microsoft.Compute/virtualMachineScaleSets/rollingUpgrades"
        assert record["location"] == "local"
    assert newest["properties"]["startedBy"] == "Platform"
    assert newest["properties"]["targetImageReference"]["version"] == "1.1.0"
    assert oldest["properties"]["startedBy"] == "User"
    assert newest["properties"]["progress"]["successfulInstanceCount"] == 5
    # The image versions GET.
    status, versions, _ = served.call("GET", f"{IMAGE_VERSIONS}?api-version=2021-11-01")
    assert status == 200
    assert [v["name"] for v in versions] == ["1.0.0", "1.1.0"]
    assert all(set(v) >= {"location", "name", "id"} for v in versions)
    # Instances with their instanceView.
    status, doc, _ = served.call("GET", f"{VMSS}/virtualMachines?{API}")
    assert status == 200 and len(doc["value"]) == 5
    view = doc["value"][0]["properties"]["instanceView"]
    assert view["vmHealth"]["status"]["displayStatus"] == "Healthy"
    assert doc["value"][0]["properties"]["storageProfile"]["imageReference"]["exactVersion"] == "1.1.0"


def test_excluded_version_does_not_move_anything(served: Served) -> None:
    model = json.loads(json.dumps(MODEL))
    model["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"] = {"enableAutomaticOSUpgrade": True}
    assert served.call("PUT", f"{VMSS}?{API}", model)[0] == 201
    publish(served, "9.0.0", exclude=True)
    time.sleep(1.5)  # the watcher wakes on every publish: give it time to (wrongly) act
    status, doc, _ = served.call("GET", f"{VMSS}/osUpgradeHistory?{API}")
    assert status == 200 and doc["value"] == []


@pytest.mark.parametrize(
    ("body", "target", "text"),
    [
        ({**MODEL, "sku": {"capacity": "five"}}, "sku.capacity", "whole number"),
        (
            {
                **MODEL,
                "properties": {
                    **MODEL["properties"],
                    "upgradePolicy": {"rollingUpgradePolicy": {"maxBatchInstancePercent": 101}},
                },
            },
            "properties.upgradePolicy.rollingUpgradePolicy.maxBatchInstancePercent",
            "5..100",
        ),
        (
            {
                **MODEL,
                "properties": {
                    **MODEL["properties"],
                    "upgradePolicy": {"rollingUpgradePolicy": {"maxUnhealthyInstancePercent": 2}},
                },
            },
            "properties.upgradePolicy.rollingUpgradePolicy.maxUnhealthyInstancePercent",
            "5..100",
        ),
        ([1, 2], "", "JSON object"),
    ],
)
def test_bad_input_is_400_naming_the_field(served: Served, body: Any, target: str, text: str) -> None:
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", body)
    assert status == 400, doc
    assert doc["error"]["code"] == "InvalidParameter"
    assert doc["error"].get("target", "") == target
    assert text in doc["error"]["message"]
    assert served.call("GET", f"{VMSS}?{API}")[0] == 404  # nothing was stored


def test_wrong_json_404_409_413_and_api_version(served: Served) -> None:
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", raw=b"{not json")
    assert status == 400 and doc["error"]["code"] == "InvalidRequestContent"
    status, doc, _ = served.call("GET", f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/nope?{API}")
    assert status == 404 and doc["error"]["code"] == "ResourceNotFound"
    status, doc, _ = served.call("GET", VMSS)
    assert status == 400 and doc["error"]["code"] == "MissingApiVersionParameter"
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", raw=b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert status == 413 and doc["error"]["code"] == "RequestEntityTooLarge"
    slow = json.loads(json.dumps(MODEL))
    slow["properties"]["upgradePolicy"]["rollingUpgradePolicy"] = {"pauseTimeBetweenBatches": "PT1M"}
    assert served.call("PUT", f"{VMSS}?{API}", slow)[0] == 201
    publish(served, "2.0.0")
    assert served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0] == 202
    status, doc, _ = served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")
    assert status == 409 and doc["error"]["code"] == "RollingUpgradeInProgress"
    status, doc, _ = served.call("POST", f"{VMSS}/rollingUpgrades/cancel?{API}")
    assert status == 202
    wait_for(
        lambda: (
            served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")[1]["properties"]["runningStatus"]["code"]
            == "Cancelled"
        )
    )
    status, doc, _ = served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")
    assert doc["properties"]["runningStatus"]["lastAction"] == "Cancel"
    assert doc["properties"]["progress"]["successfulInstanceCount"] == 1


def in_the_fixtures_subscription(served: Served, config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's default subscription made the one the fixture's gallery is in (`az account set`'s role)."""
    monkeypatch.setenv("OVERHAUL_CONFIG_DIR", str(config_dir))
    served.cli("configure", "--defaults", "subscription=subscription_id")


def test_seed_cli_commands(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's az commands with `overhaul` in place of `az`."""
    in_the_fixtures_subscription(served, tmp_path / "config", monkeypatch)
    served.cli(
        "sig",
        "image-version",
        "create",
        "--resource-group",
        "myResourceGroup",
        "--gallery-name",
        "myGallery",
        "--gallery-image-definition",
        "myImage",
        "--gallery-image-version",
        "1.0.1",
        "--container-image",
        "localhost/jammy:1.0.1",
    )
    created = served.cli(
        "vmss",
        "create",
        "--name",
        "myScaleSet",
        "--resource-group",
        "myResourceGroup",
        "--image",
        "Canonical:0001-com-ubuntu-server-jammy:22_04-lts:latest",
        "--instance-count",
        "3",
        "--upgrade-policy-mode",
        "Manual",
    )
    assert json.loads(created.stdout)["sku"]["capacity"] == 3
    updated = served.cli(
        "vmss",
        "update",
        "--name",
        "myScaleSet",
        "--resource-group",
        "myResourceGroup",
        "--set",
        "UpgradePolicy.AutomaticOSUpgradePolicy.EnableAutomaticOSUpgrade=true",
        "--set",
        "virtualMachineProfile.overhaul.healthFromPowerState=true",
    )
    assert (
        json.loads(updated.stdout)["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"][
            "enableAutomaticOSUpgrade"
        ]
        is True
    )
    started = served.cli(
        "vmss",
        "rolling-upgrade",
        "start",
        "--resource-group",
        "myResourceGroup",
        "--name",
        "myScaleSet",
        "--wait",
    )
    assert "Completed" in started.stdout
    history = served.cli(
        "vmss", "get-os-upgrade-history", "--resource-group", "myResourceGroup", "--name", "myScaleSet"
    )
    assert json.loads(history.stdout)[0]["properties"]["runningStatus"]["code"] == "Completed"  # a bare array, as az
    images = served.cli(
        "vm",
        "image",
        "list",
        "--location",
        "local",
        "--publisher",
        "Canonical",
        "--offer",
        "0001-com-ubuntu-server-jammy",
        "--sku",
        "22_04-lts",
        "--all",
    )
    listed = json.loads(images.stdout)
    assert [v["name"] for v in listed] == ["1.0.0", "1.0.1"]
    assert listed[0]["urn"] == "Canonical:0001-com-ubuntu-server-jammy:22_04-lts:1.0.0"
    assert {k: listed[0][k] for k in ("publisher", "offer", "sku", "version")} == {
        "publisher": "Canonical",
        "offer": "0001-com-ubuntu-server-jammy",
        "sku": "22_04-lts",
        "version": "1.0.0",
    }
    table = served.cli("vmss", "list-instances", "-n", "myScaleSet", "-g", "myResourceGroup", "-o", "table")
    assert table.stdout.count("Healthy") == 3
    excluded = served.cli(
        "sig",
        "image-version",
        "update",
        "-g",
        "myResourceGroup",
        "-r",
        "myGallery",
        "-i",
        "myImage",
        "-e",
        "1.0.1",
        "--exclude-from-latest",
        "true",
    )
    assert json.loads(excluded.stdout)["properties"]["publishingProfile"]["excludeFromLatest"] is True
    latest_only = served.cli(
        "vm", "image", "list", "-l", "local", "-p", "Canonical", "-f", "0001-com-ubuntu-server-jammy", "-s", "22_04-lts"
    )
    assert [v["name"] for v in json.loads(latest_only.stdout)] == ["1.0.0"]
    missing = served.cli("vmss", "show", "-n", "nope", "-g", "myResourceGroup", check=False)
    assert missing.returncode == 3 and "ResourceNotFound" in missing.stderr  # az: 3 for what does not exist


def test_cli_speaks_az(served: Served) -> None:
    """az's conventions: bare arrays, --query, -o tsv|yaml|none, --ids, start waits unless --no-wait."""
    assert served.call("PUT", f"{VMSS}?{API}", MODEL)[0] == 201
    names = served.cli(
        "vmss", "list", "-g", "myResourceGroup", "--subscription", "subscription_id", "--query", "[].name", "-o", "tsv"
    )
    assert names.stdout.split() == ["myScaleSet"]
    capacity = served.cli("vmss", "show", "--ids", VMSS, "--query", "sku.capacity")
    assert json.loads(capacity.stdout) == 5
    yaml = served.cli("vmss", "show", "--ids", VMSS, "-o", "yaml")
    assert "name: myScaleSet" in yaml.stdout and "  capacity: 5" in yaml.stdout
    assert served.cli("vmss", "show", "--ids", VMSS, "-o", "none").stdout == ""
    instances = served.cli("vmss", "list-instances", "--ids", VMSS, "--query", "length(@)")
    assert json.loads(instances.stdout) == 5
    publish(served, "1.2.0")
    started = served.cli(
        "vmss", "rolling-upgrade", "start", "--ids", VMSS, "--no-wait", "--query", "properties.runningStatus.code"
    )
    assert json.loads(started.stdout) == "RollingForward"
    followed = served.cli("vmss", "rolling-upgrade", "get-latest", "--ids", VMSS, "--wait", "-o", "none")
    assert followed.returncode == 0
    wrong = served.cli("vmss", "show", "--ids", "/subscriptions/x/oops", check=False)
    assert wrong.returncode == 2 and "--ids" in wrong.stderr  # a usage error, as az
    bad_query = served.cli("vmss", "show", "--ids", VMSS, "--query", "[[", check=False)
    assert bad_query.returncode == 1 and "--query" in bad_query.stderr


def test_cli_help_and_unreachable_service(tmp_path: Path) -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "overhaul.cli", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "serve" in helped.stdout and "vmss" in helped.stdout
    env = {**os.environ, "OVERHAUL_TOKEN": "x", "OVERHAUL_ENDPOINT": "http://127.0.0.1:9"}
    down = subprocess.run(
        [sys.executable, "-m", "overhaul.cli", "vmss", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert down.returncode == 1 and "is `overhaul serve` running?" in down.stderr


def test_schemathesis_finds_no_server_errors(served: Served, tmp_path: Path) -> None:
    status, spec, _ = served.call("GET", "/openapi.json")
    assert status == 200
    spec_path = tmp_path / "openapi.json"
    spec_path.write_text(json.dumps(spec))
    st = str(Path(sys.executable).with_name("st"))
    result = subprocess.run(
        [
            st,
            "run",
            str(spec_path),
            "--url",
            served.url,
            "--header",
            f"Authorization: Bearer {served.token}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or "passed" in result.stdout, result.stdout[-2000:]


def test_cli_defaults_exit_codes_and_debug(served: Served, tmp_path: Path) -> None:
    """az's `configure --defaults`, exit code 3 for what does not exist, --debug showing each request."""
    assert served.call("PUT", f"{VMSS}?{API}", MODEL)[0] == 201

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return served.cli(*args, check=False, env={"OVERHAUL_CONFIG_DIR": str(tmp_path / "config")})

    configured = cli("configure", "--defaults", "group=myResourceGroup", "subscription=subscription_id")
    assert configured.returncode == 0 and json.loads(configured.stdout)["group"] == "myResourceGroup"
    shown = cli("vmss", "show", "-n", "myScaleSet", "--query", "name", "--debug")
    assert shown.returncode == 0 and json.loads(shown.stdout) == "myScaleSet"
    assert "GET " + served.url + "/subscriptions/subscription_id/resourceGroups/myResourceGroup/" in shown.stderr
    missing = cli("vmss", "show", "-n", "nope")
    assert missing.returncode == 3 and "ResourceNotFound" in missing.stderr
    assert cli("configure", "--defaults", "group=").returncode == 0  # an empty value clears it, as az
    unset = cli("vmss", "show", "-n", "myScaleSet")
    assert unset.returncode == 2 and "configure --defaults group" in unset.stderr


def test_quarantine_is_shown_set_and_cleared_from_the_cli(served: Served) -> None:
    publish(served, "1.0.0")
    publish(served, "1.1.0")
    where = [
        "-g",
        "myResourceGroup",
        "-r",
        "myGallery",
        "-i",
        "myImage",
        "-e",
        "1.1.0",
        "--subscription",
        "subscription_id",
    ]
    shown = json.loads(served.cli("sig", "image-version", "show", *where).stdout)
    assert shown["properties"]["overhaul"] == {"quarantined": False}
    served.cli("sig", "image-version", "update", *where, "--set", "overhaul.quarantined=true")
    shown = json.loads(served.cli("sig", "image-version", "show", *where).stdout)
    assert shown["properties"]["overhaul"] == {"quarantined": True, "quarantineReason": "quarantined by a person"}
    # 'latest' skips it: a new scale set lands on 1.0.0.
    assert served.call("PUT", f"{VMSS}?{API}", MODEL)[0] == 201
    _, instances, _ = served.call("GET", f"{VMSS}/virtualMachines?{API}")
    assert {i["properties"]["storageProfile"]["imageReference"]["exactVersion"] for i in instances["value"]} == {
        "1.0.0"
    }
    served.cli("sig", "image-version", "update", *where, "--set", "overhaul.quarantined=false")
    shown = json.loads(served.cli("sig", "image-version", "show", *where).stdout)
    assert shown["properties"]["overhaul"] == {"quarantined": False}
    bad = served.cli("sig", "image-version", "update", *where, "--set", "overhaul.quarantined=maybe", check=False)
    assert bad.returncode != 0 and "properties.overhaul.quarantined" in bad.stderr


def test_cli_scale_instance_views_connection_info_and_verbose(served: Served) -> None:
    model = json.loads(json.dumps(MODEL))
    model["properties"]["virtualMachineProfile"]["overhaul"]["ports"] = [8080]
    assert served.call("PUT", f"{VMSS}?{API}", model)[0] == 201
    ids = ("--ids", VMSS)
    scaled = served.cli("vmss", "scale", *ids, "--new-capacity", "3", "--query", "sku.capacity")
    assert json.loads(scaled.stdout) == 3
    view = json.loads(served.cli("vmss", "get-instance-view", *ids).stdout)
    assert {"code": "PowerState/running", "count": 3} in view["virtualMachine"]["statusesSummary"]
    one = json.loads(served.cli("vmss", "get-instance-view", *ids, "--instance-id", "2").stdout)
    assert {s["code"] for s in one["statuses"]} == {"ProvisioningState/succeeded", "PowerState/running"}
    every = json.loads(served.cli("vmss", "get-instance-view", *ids, "--instance-id", "*").stdout)
    assert len(every) == 3
    missing = served.cli("vmss", "get-instance-view", *ids, "--instance-id", "7", check=False)
    assert missing.returncode == 3 and "instance 7 does not exist" in missing.stderr
    info = json.loads(served.cli("vmss", "list-instance-connection-info", *ids).stdout)
    assert sorted(info) == ["instance 0", "instance 1", "instance 2"]
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", ports["8080"]) for ports in info.values()), info
    verbose = served.cli("vmss", "show", *ids, "--verbose", "-o", "none")
    assert re.search(r"overhaul: GET /subscriptions/\S+/myScaleSet -> 200 in \d+\.\d+s", verbose.stderr)


def test_cli_image_definition_list_show_delete(served: Served) -> None:
    where = ("-g", "myResourceGroup", "-r", "myGallery", "--subscription", "subscription_id")
    served.cli(
        "sig", "image-definition", "create", *where, "-i", "other", "--publisher", "p", "--offer", "o", "--sku", "s"
    )
    names = served.cli("sig", "image-definition", "list", *where, "--query", "[].name", "-o", "tsv").stdout.split()
    assert sorted(names) == ["myImage", "other"]
    shown = json.loads(served.cli("sig", "image-definition", "show", *where, "-i", "other").stdout)
    assert shown["properties"]["identifier"] == {"publisher": "p", "offer": "o", "sku": "s"}
    refused = served.cli("sig", "image-definition", "delete", *where, "-i", "myImage", check=False)
    assert (
        refused.returncode == 1 and "CannotDeleteResource" in refused.stderr and "delete them first" in refused.stderr
    )
    served.cli("sig", "image-definition", "delete", *where, "-i", "other")
    gone = served.cli("sig", "image-definition", "show", *where, "-i", "other", check=False)
    assert gone.returncode == 3
    assert served.call("DELETE", f"{GALLERY.rsplit('/', 1)[0]}/other?{API}")[0] == 204  # ARM: nothing to delete
    incomplete = served.cli("sig", "image-definition", "create", *where, "-i", "x", check=False)
    assert incomplete.returncode != 0 and "--publisher, --offer, --sku required" in incomplete.stderr


def test_cli_vmss_extension_set_list_show_delete(served: Served, tmp_path: Path) -> None:
    """The Application Health extension without a JSON file, as `az vmss extension set`."""
    assert served.call("PUT", f"{VMSS}?{API}", MODEL)[0] == 201
    where = ("--vmss-name", "myScaleSet", "-g", "myResourceGroup", "--subscription", "subscription_id")
    health = '{"protocol": "http", "port": 8080, "requestPath": "/health"}'
    served.cli("vmss", "extension", "set", *where, "-n", "ApplicationHealthLinux", "--settings", health)
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"commandToExecute": "echo configured"}))
    served.cli(
        "vmss", "extension", "set", *where, "-n", "CustomScript", "--extension-instance-name", "setup",
        "--settings", f"@{script}", "--provision-after-extensions", "ApplicationHealthLinux",
    )  # fmt: skip
    names = served.cli("vmss", "extension", "list", *where, "--query", "[].name", "-o", "tsv").stdout.split()
    assert names == ["ApplicationHealthLinux", "setup"]
    shown = json.loads(served.cli("vmss", "extension", "show", *where, "-n", "setup").stdout)
    assert shown["properties"] == {
        "publisher": "Microsoft.Azure.Extensions",
        "type": "CustomScript",
        "typeHandlerVersion": "2.1",
        "settings": {"commandToExecute": "echo configured"},
        "provisionAfterExtensions": ["ApplicationHealthLinux"],
    }
    _, model, _ = served.call("GET", f"{VMSS}?{API}")
    extensions = model["properties"]["virtualMachineProfile"]["extensionProfile"]["extensions"]
    assert extensions[0]["properties"]["publisher"] == "Microsoft.ManagedServices"
    assert extensions[0]["properties"]["settings"]["port"] == 8080
    served.cli("vmss", "extension", "delete", *where, "-n", "setup")
    missing = served.cli("vmss", "extension", "show", *where, "-n", "setup", check=False)
    assert missing.returncode == 3 and "setup" in missing.stderr
    bad = served.cli("vmss", "extension", "set", *where, "-n", "CustomScript", "--settings", "{oops", check=False)
    assert bad.returncode == 2 and "--settings: not valid JSON" in bad.stderr
    unknown = served.cli("vmss", "extension", "set", *where, "-n", "Other", check=False)
    assert unknown.returncode == 2 and "--publisher and --version are required" in unknown.stderr


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("overhaul vm", {"vm", "vmss"}),
        ("overhaul vmss rol", {"rolling-upgrade"}),
        ("overhaul vmss rolling-upgrade --name web st", {"start"}),
        ("overhaul vmss extension set --settings", {"--settings"}),
        ("overhaul sig image-version --gallery-image-v", {"--gallery-image-version"}),
    ],
)
def test_bash_completion_completes_commands_and_flags(words: str, expected: set[str], tmp_path: Path) -> None:
    """`source <(overhaul completion bash)` in a real bash: no server or token needed."""
    script = subprocess.run(
        [sys.executable, "-m", "overhaul.cli", "completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("OVERHAUL_")},
    ).stdout
    (tmp_path / "overhaul.bash").write_text(script)
    parts = words.split(" ")
    probe = (
        f"source {tmp_path / 'overhaul.bash'}; COMP_WORDS=({' '.join(parts)}); COMP_CWORD={len(parts) - 1}; "
        '_overhaul; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert set(result.stdout.split()) == expected, result.stdout + result.stderr


def contains(whole: Any, part: Any) -> bool:
    """Every field of ``part`` is in ``whole`` with the same value (lists item by item)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and contains(whole[k], v) for k, v in part.items())
    if isinstance(part, list):
        return isinstance(whole, list) and len(whole) == len(part) and all(map(contains, whole, part))
    return bool(whole == part)


def test_gallery_documents_round_trip(served: Served) -> None:
    """Azure fields of image definitions and versions with no meaning here come back verbatim, through PATCH too."""
    definition = {
        "location": "local",
        "tags": {"team": "web"},
        "properties": {
            "osType": "Linux",
            "osState": "Generalized",
            "hyperVGeneration": "V2",
            "description": "web tier",
            "endOfLifeDate": "2030-01-01T00:00:00Z",
            "recommended": {"vCPUs": {"min": 1, "max": 4}, "memory": {"min": 1, "max": 8}},
            "features": [{"name": "SecurityType", "value": "TrustedLaunch"}],
            "architecture": "x64",
            "identifier": {"publisher": "contoso", "offer": "web", "sku": "debian"},
        },
    }
    other = GALLERY.rsplit("/", 1)[0] + "/web"
    assert served.call("PUT", f"{other}?{API}", definition)[0] == 201
    assert contains(served.call("GET", f"{other}?{API}")[1], definition)
    version = {
        "location": "local",
        "tags": {"build": "42"},
        "properties": {
            "publishingProfile": {
                "targetRegions": [{"name": "local", "regionalReplicaCount": 2, "storageAccountType": "Standard_ZRS"}],
                "replicaCount": 1,
                "excludeFromLatest": False,
                "endOfLifeDate": "2030-01-01T00:00:00Z",
                "storageAccountType": "Standard_LRS",
            },
            "storageProfile": {"source": {"overhaul": {"containerImage": "localhost/web:2.0.0"}}},
            "safetyProfile": {"allowDeletionOfReplicatedLocations": False},
        },
    }
    assert served.call("PUT", f"{other}/versions/2.0.0?{API}", version)[0] == 201
    assert contains(served.call("GET", f"{other}/versions/2.0.0?{API}")[1], version)
    patched = {"properties": {"publishingProfile": {"excludeFromLatest": True}}}
    status, doc, _ = served.call("PATCH", f"{other}/versions/2.0.0?{API}", patched)
    assert status == 200 and doc["properties"]["publishingProfile"]["excludeFromLatest"] is True
    assert doc["properties"]["publishingProfile"]["replicaCount"] == 1 and doc["tags"] == {"build": "42"}
    windows = {"properties": {**definition["properties"], "osType": "Windows"}}  # type: ignore[dict-item]
    status, doc, _ = served.call("PUT", f"{other}2?{API}", windows)
    assert status == 400 and doc["error"]["target"] == "properties.osType"


def test_an_operation_ends_only_when_the_attempt_is_done() -> None:
    """Faulted with a commit still in flight is InProgress: a client acting at once would get 409 otherwise."""
    from dataclasses import replace as with_fields  # noqa: PLC0415

    from overhaul.adapters.http.arm import operation_doc  # noqa: PLC0415
    from overhaul.core.model import RollingUpgradePolicy  # noqa: PLC0415
    from overhaul.core.rollout import Attempt, AttemptStatus, InstanceProgress, StartedBy, Step  # noqa: PLC0415

    attempt = Attempt("a", "web", "3.0.0", StartedBy.USER, False, RollingUpgradePolicy(), 5, 100.0)
    ending = attempt.with_instance(InstanceProgress(0, Step.KEEPING_FAILED, 101.0)).finished(
        AttemptStatus.FAULTED, 102.0, "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade", "1 of 1"
    )
    assert operation_doc("op", ending)["status"] == "InProgress"
    assert operation_doc("op", ending, cancel=True)["status"] == "InProgress"
    done = ending.with_instance(with_fields(ending.instances[0], step=Step.FAILED))
    doc = operation_doc("op", done)
    assert doc["status"] == "Failed" and doc["error"]["message"] == "1 of 1" and "endTime" in doc
    assert operation_doc("op", done, cancel=True)["status"] == "Succeeded"


def test_galleries_are_resources(served: Served) -> None:
    """az sig create / list / show / delete; a gallery an image definition names exists with it; a gallery that
    holds definitions is not deleted; names are case-insensitive and unique on the host."""
    base = "/subscriptions/subscription_id/resourceGroups/myResourceGroup/providers/Microsoft.Compute/galleries"
    sub = ("--subscription", "subscription_id")
    created = json.loads(
        served.cli("sig", "create", "-g", "myResourceGroup", "-r", "team", "--description", "ours", *sub).stdout
    )
    assert created["id"] == f"{base}/team" and created["type"] == "Microsoft.Compute/galleries"
    assert created["properties"]["description"] == "ours"
    assert created["properties"]["provisioningState"] == "Succeeded"
    status, again, _ = served.call("PUT", f"{base}/TEAM?{API}", {"location": "local", "tags": {"a": "b"}})
    assert status == 200 and again["name"] == "team" and again["tags"] == {"a": "b"}
    # myGallery exists because the fixture made an image definition in it.
    names = served.cli("sig", "list", "-g", "myResourceGroup", *sub, "--query", "[].name", "-o", "tsv").stdout.split()
    assert sorted(names) == ["myGallery", "team"]
    assert served.cli("sig", "list", *sub, "--query", "length(@)", "-o", "tsv").stdout.strip() == "2"
    shown = json.loads(served.cli("sig", "show", "-g", "myResourceGroup", "-r", "myGallery", *sub).stdout)
    assert shown["id"].endswith("/galleries/myGallery")
    assert json.loads(served.cli("sig", "show", "--ids", f"{base}/team").stdout)["name"] == "team"
    wrong = served.cli("sig", "show", "--ids", VMSS, check=False)
    assert wrong.returncode == 2 and "Microsoft.Compute/galleries/NAME" in wrong.stderr
    other_group = served.call("PUT", base.replace("myResourceGroup", "other") + f"/team?{API}", {"location": "local"})
    assert other_group[0] == 409 and other_group[1]["error"]["code"] == "GalleryNameTaken"
    status, doc, _ = served.call("PUT", f"{base}/bad%20name?{API}", {})
    assert status == 400 and doc["error"]["target"] == "name"
    refused = served.cli("sig", "delete", "-g", "myResourceGroup", "-r", "myGallery", *sub, check=False)
    assert refused.returncode == 1 and "holds image definition(s) myImage" in refused.stderr
    served.cli("sig", "delete", "-g", "myResourceGroup", "-r", "team", *sub)
    assert served.cli("sig", "show", "-g", "myResourceGroup", "-r", "team", *sub, check=False).returncode == 3
    assert served.call("DELETE", f"{base}/team?{API}")[0] == 204


def test_a_load_balancer_probe_named_by_id_is_the_health_source(served: Served) -> None:
    """`az network lb create` + `az network lb probe create`, then Azure's documented healthProbe.id, verbatim: the
    probe's settings act, a probe in use keeps its port and stays, a missing one is a 400 naming the field."""
    lb_id = RG + "/providers/Microsoft.Network/loadBalancers/myLoadBalancer"
    where = ("-g", "myResourceGroup", "--subscription", "subscription_id")
    served.cli("network", "lb", "create", *where, "-n", "myLoadBalancer")
    probe = json.loads(
        served.cli(
            "network",
            "lb",
            "probe",
            "create",
            *where,
            "--lb-name",
            "myLoadBalancer",
            "-n",
            "myHealthProbe",
            "--protocol",
            "http",
            "--port",
            "8080",
            "--path",
            "/health",
            "--interval",
            "5",
            "--threshold",
            "2",
        ).stdout
    )
    assert probe["id"] == f"{lb_id}/probes/myHealthProbe"
    assert probe["properties"] == {
        "protocol": "Http",
        "port": 8080,
        "requestPath": "/health",
        "intervalInSeconds": 5,
        "numberOfProbes": 2,
        "provisioningState": "Succeeded",
    }
    model = json.loads(json.dumps(MODEL))
    profile = model["properties"]["virtualMachineProfile"]
    del profile["overhaul"]
    profile["networkProfile"] = {"healthProbe": {"id": f"{lb_id}/probes/myHealthProbe"}}
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", model)
    assert status == 201, doc
    assert doc["properties"]["virtualMachineProfile"]["networkProfile"]["healthProbe"]["id"] == probe["id"]
    # The probe's port is published by every instance, as an inline probe's is.
    info = json.loads(served.cli("vmss", "list-instance-connection-info", *where, "-n", "myScaleSet").stdout)
    assert all("8080" in ports for ports in info.values()), info
    # A new path applies; a new port, or deleting the probe or the load balancer, is refused while in use.
    lb_args = ("network", "lb", "probe", "update", *where, "--lb-name", "myLoadBalancer", "-n", "myHealthProbe")
    served.cli(*lb_args, "--path", "/ready")
    status, doc, _ = served.call("GET", f"{VMSS}?{API}")
    assert (
        doc["properties"]["virtualMachineProfile"]["networkProfile"]["healthProbe"]["properties"]["requestPath"]
        == "/ready"
    )
    moved = served.cli(*lb_args, "--port", "9090", check=False)
    assert moved.returncode == 1 and "InUseProbeCannotChange" in moved.stderr, moved.stderr
    deleted = served.cli("network", "lb", "probe", "delete", *lb_args[4:], check=False)
    assert deleted.returncode == 1 and "InUseProbeCannotBeDeleted" in deleted.stderr, deleted.stderr
    gone = served.cli("network", "lb", "delete", *where, "-n", "myLoadBalancer", check=False)
    assert gone.returncode == 1 and "in use by scale set(s) myScaleSet" in gone.stderr
    # Naming a probe that does not exist, or something that is not a probe id, is 400 naming the field.
    field = "properties.virtualMachineProfile.networkProfile.healthProbe.id"
    for bad in (f"{lb_id}/probes/nope", RG + "/providers/Microsoft.Network/loadBalancers/nolb/probes/p", "junk"):
        profile["networkProfile"] = {"healthProbe": {"id": bad}}
        status, doc, _ = served.call("PUT", f"{VMSS}?{API}", model)
        assert status == 400 and doc["error"]["target"] == field, (bad, doc)
    listed = served.cli("network", "lb", "list", "--subscription", "subscription_id", "--query", "[].name", "-o", "tsv")
    assert listed.stdout.split() == ["myLoadBalancer"]
    assert json.loads(served.cli("network", "lb", "show", "--ids", lb_id).stdout)["id"] == lb_id


def test_update_instances_applies_the_latest_model_and_latest_model_applied_is_honest(served: Served) -> None:
    """Manual mode: a new customData leaves instances on the old model (latestModelApplied false) until
    `az vmss update-instances` (POST …/manualupgrade), which waits for the end as az does."""
    assert served.call("PUT", f"{VMSS}?{API}", MODEL)[0] == 201
    where = ("-g", "myResourceGroup", "-n", "myScaleSet", "--subscription", "subscription_id")

    def applied() -> list[bool]:
        listed = served.cli("vmss", "list-instances", *where, "--query", "[].properties.latestModelApplied")
        return [bool(x) for x in json.loads(listed.stdout)]

    assert applied() == [True] * 5
    served.cli("vmss", "update", *where, "--set", "virtualMachineProfile.osProfile.customData=bmV3")
    assert applied() == [False] * 5
    served.cli("vmss", "update-instances", *where, "--instance-ids", "0", "2")
    assert applied() == [True, False, True, False, False]
    served.cli("vmss", "update-instances", *where, "--instance-ids", "*")
    assert applied() == [True] * 5
    status, doc, _ = served.call("POST", f"{VMSS}/manualupgrade?{API}", {})
    assert status == 400 and doc["error"]["target"] == "instanceIds", doc


def test_vm_scale_set_from_the_cli(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version with VM artefacts (a relative --disk-image is made absolute) and a scale set of VMs whose size
    `vmss show` reports; a scale set cannot turn into VMs, and VMs need a version with a disk image."""
    in_the_fixtures_subscription(served, tmp_path / "config", monkeypatch)
    where = ("-g", "myResourceGroup", "-r", "myGallery", "-i", "myImage")
    (tmp_path / "vm-2.0.0").mkdir()
    monkeypatch.chdir(tmp_path)
    created = served.cli("sig", "image-version", "create", *where, "-e", "2.0.0", "--disk-image", "vm-2.0.0")
    source = json.loads(created.stdout)["properties"]["storageProfile"]["source"]["overhaul"]
    assert source == {"diskImage": str(tmp_path / "vm-2.0.0")}
    table = served.cli("sig", "image-version", "list", *where, "-o", "table").stdout
    assert "DiskImage" in table and str(tmp_path / "vm-2.0.0") in table
    neither = served.cli("sig", "image-version", "create", *where, "-e", "2.0.1", check=False)
    assert neither.returncode != 0 and "--disk-image" in neither.stderr

    image = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts:latest"
    vm = ("--vm", "--vm-memory", "384", "--vm-cpus", "1")
    served.cli("vmss", "create", "-g", "myResourceGroup", "-n", "vms", "--image", image, "--instance-count", "2", *vm)
    shown = json.loads(served.cli("vmss", "show", "-g", "myResourceGroup", "-n", "vms").stdout)
    profile = shown["properties"]["virtualMachineProfile"]
    assert profile["overhaul"]["vm"] == {"memoryMB": 384, "vCPUs": 1, "accel": "auto"}
    assert shown["sku"]["name"] == "Standard_VM"
    views = json.loads(served.cli("vmss", "list-instances", "-g", "myResourceGroup", "-n", "vms").stdout)
    versions = {v["properties"]["storageProfile"]["imageReference"]["exactVersion"] for v in views}
    assert versions == {"2.0.0"}  # 'latest' for VMs: 1.0.0 has no disk image

    served.cli("vmss", "create", "-g", "myResourceGroup", "-n", "web", "--image", image, "--instance-count", "1")
    changed = served.cli(
        "vmss",
        "update",
        "-g",
        "myResourceGroup",
        "-n",
        "web",
        "--set",
        "virtualMachineProfile.overhaul.vm={}",
        check=False,
    )
    assert changed.returncode != 0 and "properties.virtualMachineProfile.overhaul.vm" in changed.stderr
    pinned = served.cli(
        "vmss", "create", "-g", "myResourceGroup", "-n", "old", "--image", image.replace("latest", "1.0.0"), "--vm",
        check=False,
    )  # fmt: skip
    assert pinned.returncode != 0 and "names no diskImage" in pinned.stderr
