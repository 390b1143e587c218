"""The REST API against a running `overhaul serve` (in-memory engine): Azure's calls, verbatim."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overhaul.adapters.http.app import ARM_ROUTES
from overhaul.adapters.http.openapi import openapi_document
from tests.builders import API_MODEL, GALLERY, IMAGE_VERSIONS, RG, VMSS, hooked_model, publish, seeded_serve, wait_for
from tests.serve import API, Served


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with seeded_serve(tmp_path) as running:
        yield running


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
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", API_MODEL)
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
    model = json.loads(json.dumps(API_MODEL))
    model["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"] = {"enableAutomaticOSUpgrade": True}
    assert served.call("PUT", f"{VMSS}?{API}", model)[0] == 201
    publish(served, "9.0.0", exclude=True)
    # The watcher woke on the publish and has looked at every scale set since: it started nothing.
    published = served.metric("overhaul_changes")
    wait_for(lambda: served.metric("overhaul_auto_upgrades_checked_change") >= published)
    status, doc, _ = served.call("GET", f"{VMSS}/osUpgradeHistory?{API}")
    assert status == 200 and doc["value"] == []


def test_lifecycle_hook_events_over_http_answer_with_field_errors_404_and_409(served: Served) -> None:
    hook = {"type": "UpgradeAutoOSRollingBatchStarting", "waitDuration": "PT1H", "defaultAction": "Reject"}
    model = hooked_model(hook)
    assert served.call("PUT", f"{VMSS}?{API}", model)[0] == 201
    publish(served, "2.0.0")
    events = f"{VMSS}/lifecycleHookEvents"
    wait_for(lambda: len(served.call("GET", f"{events}?{API}")[1]["value"]) == 1)
    [event] = served.call("GET", f"{events}?{API}")[1]["value"]
    props = event["properties"]
    assert event["id"].lower() == f"{VMSS}/lifecycleHookEvents/{event['name']}".lower()
    assert props["state"] == "Active" and props["defaultAction"] == "Reject" and props["waitUntil"].endswith("Z")
    assert props["targetResources"] == [{"resource": {"id": f"{VMSS}/virtualMachines/0"}, "actionState": "Waiting"}]
    url = f"{events}/{event['name']}?{API}"
    wrong = {
        "properties": {
            "targetResources": [{"resource": {"id": f"{VMSS}/virtualMachines/1"}, "actionState": "Approved"}]
        }
    }
    status, doc, _ = served.call("PATCH", url, wrong)
    assert status == 400 and doc["error"]["target"] == "properties.targetResources[0].resource.id", doc
    status, doc, _ = served.call("PATCH", url, {"properties": {"waitUntil": "soon"}})
    assert status == 400 and doc["error"]["target"] == "properties.waitUntil", doc
    assert served.call("GET", f"{events}/nope?{API}")[0] == 404
    why = served.call("GET", f"{VMSS}/rollingUpgrades/why?{API}")[1]["value"]
    assert [c["code"] for c in why] == ["LifecycleHookWaiting"] and why[0]["nextActionTime"] == props["waitUntil"]
    # The instance it holds back says so in its own view; the other is held by nothing yet.
    views = {vm["instanceId"]: vm["properties"]["overhaul"]["why"] for vm in served.instances(VMSS)}
    assert [c["code"] for c in views["0"]] == ["LifecycleHookWaiting"] and views["1"] == []
    approve = {
        "properties": {
            "targetResources": [{"resource": {"id": f"{VMSS}/virtualMachines/0"}, "actionState": "Approved"}]
        }
    }
    status, doc, _ = served.call("PATCH", url, approve)
    assert status == 200 and doc["properties"]["state"] == "Completed", doc
    status, doc, _ = served.call("PATCH", url, approve)
    assert status == 409 and doc["error"]["code"] == "LifecycleHookEventNotActive"
    wait_for(lambda: len(served.call("GET", f"{events}?{API}")[1]["value"]) == 2)  # batch 2 has its own


@pytest.mark.parametrize(
    ("body", "target", "text"),
    [
        ({**API_MODEL, "sku": {"capacity": "five"}}, "sku.capacity", "whole number"),
        (
            {
                **API_MODEL,
                "properties": {
                    **API_MODEL["properties"],
                    "upgradePolicy": {"rollingUpgradePolicy": {"maxBatchInstancePercent": 101}},
                },
            },
            "properties.upgradePolicy.rollingUpgradePolicy.maxBatchInstancePercent",
            "5..100",
        ),
        (
            {
                **API_MODEL,
                "properties": {
                    **API_MODEL["properties"],
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
    slow = json.loads(json.dumps(API_MODEL))
    slow["properties"]["upgradePolicy"]["rollingUpgradePolicy"] = {"pauseTimeBetweenBatches": "PT1M"}
    assert served.call("PUT", f"{VMSS}?{API}", slow)[0] == 201
    publish(served, "2.0.0")
    status, _, headers = served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")
    assert status == 202
    # An operation still running says when to poll again (clients would otherwise wait 30 s between polls).
    status, doc, polled = served.call("GET", headers["Azure-AsyncOperation"].removeprefix(served.url))
    assert (status, doc["status"], polled.get("Retry-After")) == (200, "InProgress", "1")
    status, doc, _ = served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")
    assert status == 409 and doc["error"]["code"] == "RollingUpgradeInProgress"
    [detail] = doc["error"]["details"]  # why it was refused, and what unblocks it
    assert detail["code"] == "RollingUpgradeInProgress" and "rolling-upgrade cancel" in detail["unblock"]
    status, doc, _ = served.call("PATCH", f"{VMSS}?{API}", {"tags": {"during": "attempt"}})
    assert status == 409 and doc["error"]["details"][0]["code"] == "ModelChangeRefused", doc

    def why() -> list[dict[str, Any]]:
        return list(served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")[1]["properties"]["overhaul"]["why"])

    # After the first batch, the pause is why it waits: its rule, threshold and when the next batch starts.
    wait_for(lambda: [c["code"] for c in why()] == ["PauseBetweenBatches"])
    [pause] = why()
    assert pause["rule"] == "pauseTimeBetweenBatches" and pause["threshold"] == 60
    assert pause["nextActionTime"].endswith("Z") and "start batch 2" in pause["description"]
    assert served.call("GET", f"{VMSS}/rollingUpgrades/why?{API}")[1]["value"][0]["code"] == "PauseBetweenBatches"
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


# Examples per operation: make test and make check fuzz a sample; make chaos fuzzes deeper (OVERHAUL_FUZZ_EXAMPLES=100).
FUZZ_EXAMPLES = int(os.environ.get("OVERHAUL_FUZZ_EXAMPLES", "10"))
# The document's operations in five parts, fuzzed side by side by the suite's workers (each operation in one).
SCHEMATHESIS_SHARDS = {
    "scale sets": r"virtualMachineScaleSets(/\{name\}(/virtualMachines.*|/instanceView)?)?$|/operations/",
    "scale set actions": r"virtualMachineScaleSets/\{name\}/"
    r"(?!virtualMachines|instanceView|lifecycleHookEvents|providers)",
    "gallery": r"galleries|publishers|Microsoft.Compute/images",
    "network, maintenance, hooks": r"loadBalancers|Microsoft.Maintenance|lifecycleHookEvents|healthz|virtualNetworks"
    r"|^/subscriptions(/\{subscription\})?$|^/tenants$|resourcegroups(/\{rg\})?$|operationresults|/resources$",
    "event subscriptions, hosts": r"resourceGroups/\{rg\}/providers/Microsoft.EventGrid|hostGroups"
    r"|providers/Microsoft.Resources/deployments(/\{name\}.*)?$",
}
# Operations left out of the fuzzing because the same handlers serve a fuzzed operation: a scale set's event
# subscriptions are the resource group's with another scope (fuzzing them would mostly meet a 404 for the scale set).
SAME_HANDLERS_AS_FUZZED = (
    r"virtualMachineScaleSets/\{name\}/providers/Microsoft.EventGrid"
    # The kept network types share virtualNetworks' handlers (routes/kept.py); az's second paths, their first's.
    r"|publicIPAddresses|networkSecurityGroups|deployments/$|resourcegroups/\{rg\}/deployments/"
)


def test_the_schemathesis_shards_cover_every_operation_once() -> None:
    for path in openapi_document()["paths"]:
        shards = [name for name, pattern in SCHEMATHESIS_SHARDS.items() if re.search(pattern, path)]
        assert len(shards) == (0 if re.search(SAME_HANDLERS_AS_FUZZED, path) else 1), (path, shards)


def test_the_operations_left_unfuzzed_share_their_handlers_with_fuzzed_ones() -> None:
    def unscoped(path: str) -> str:
        return re.sub(r"^.*/providers/Microsoft.EventGrid", "", path)

    handlers: dict[tuple[str, str], set[object]] = {}
    for method, path, handler in ARM_ROUTES:
        if "Microsoft.EventGrid" in path:
            handlers.setdefault((method, unscoped(path)), set()).add(handler)
    assert handlers and all(len(found) == 1 for found in handlers.values()), handlers

    # Each kept network type's routes are made by the same code as virtualNetworks'; az's second deployment paths
    # are served by the handlers of the first.
    def code(path_part: str) -> set[tuple[str, str]]:
        return {(m, h.__code__.co_qualname) for m, p, h in ARM_ROUTES if path_part in p}

    for kind in ("publicIPAddresses", "networkSecurityGroups"):
        assert code(kind) == code("virtualNetworks")
    by_path = {(m, p): h for m, p, h in ARM_ROUTES}
    deployments = "/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.Resources/deployments"
    assert by_path[("GET", deployments + "/")] is by_path[("GET", deployments)]
    legacy = "/subscriptions/{sub}/resourcegroups/{rg}/deployments/{name}/operations"
    assert by_path[("GET", legacy)] is by_path[("GET", deployments + "/{name}/operations")]
    unfuzzed = [p for p in openapi_document()["paths"] if re.search(SAME_HANDLERS_AS_FUZZED, p)]
    assert len(unfuzzed) == 3 + 2 * 3 + 2


@pytest.mark.timeout(600)  # CPU-bound (it generates requests): minutes on a busy machine, seconds on an idle one
@pytest.mark.parametrize("shard", SCHEMATHESIS_SHARDS)
def test_schemathesis_finds_no_server_errors(served: Served, tmp_path: Path, shard: str) -> None:
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
            "--include-path-regex",
            SCHEMATHESIS_SHARDS[shard],
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(FUZZ_EXAMPLES),
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
    model = json.loads(json.dumps(API_MODEL))
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
    assert served.call("PUT", f"{VMSS}?{API}", API_MODEL)[0] == 201
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


def test_star_names_every_instance_as_in_azure(served: Served) -> None:
    assert served.call("PUT", f"{VMSS}?{API}", API_MODEL)[0] == 201
    publish(served, "1.1.0")
    assert served.call("POST", f"{VMSS}/reimage?{API}", {"instanceIds": ["*"]})[0] == 200
    assert {v for v, _ in served.versions_and_health(VMSS)} == {"1.1.0"}
    status, one, _ = served.call("GET", f"{VMSS}/virtualMachines/3?{API}")  # az vmss show --instance-id 3
    assert status == 200 and one["instanceId"] == "3" and one["id"] == served.instances(VMSS)[3]["id"]
    assert one["properties"]["storageProfile"]["imageReference"]["exactVersion"] == "1.1.0"
    assert served.call("GET", f"{VMSS}/virtualMachines/9?{API}")[0] == 404
    status, doc, _ = served.call("POST", f"{VMSS}/reimage?{API}", {"instanceIds": ["*", "0"]})
    assert status == 400 and doc["error"]["target"] == "instanceIds"
