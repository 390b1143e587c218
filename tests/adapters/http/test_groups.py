"""Resource groups as Azure keeps them: made before anything is put in them (ResourceGroupNotFound otherwise),
their location fixed, and deleted as a long-running operation that removes what they hold and nothing else."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.builders import API_MODEL
from tests.serve import Served, serve_in_process

API = "api-version=2022-09-01"
SUB = "/subscriptions/groups"


def group(name: str) -> str:
    return f"{SUB}/resourcegroups/{name}"


def provider(name: str) -> str:
    return f"{SUB}/resourceGroups/{name}/providers"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve_in_process(tmp_path / "state", "--engine", "memory") as running:
        yield running


def test_a_group_is_created_read_listed_and_keeps_its_location(served: Served) -> None:
    status, doc, _ = served.call("PUT", f"{group('web')}?{API}", {"location": "local", "tags": {"team": "a"}})
    assert status == 201, doc
    assert doc == {
        "id": f"{SUB}/resourceGroups/web",
        "name": "web",
        "type": "Microsoft.Resources/resourceGroups",
        "location": "local",
        "tags": {"team": "a"},
        "properties": {"provisioningState": "Succeeded"},
    }
    assert served.call("PUT", f"{group('WEB')}?{API}", {"location": "local"})[0] == 200  # the same group
    status, doc, _ = served.call("PUT", f"{group('web')}?{API}", {"location": "elsewhere"})
    assert (status, doc["error"]["code"]) == (409, "InvalidResourceGroupLocation")
    status, doc, _ = served.call("PATCH", f"{group('web')}?{API}", {"tags": {"team": "b"}})
    assert status == 200 and doc["tags"] == {"team": "b"} and doc["location"] == "local"
    assert served.call("HEAD", f"{group('web')}?{API}")[0] == 204
    assert served.call("HEAD", f"{group('none')}?{API}")[0] == 404
    status, doc, _ = served.call("GET", f"{group('none')}?{API}")
    assert (status, doc["error"]["code"]) == (404, "ResourceGroupNotFound")
    assert [g["name"] for g in served.call("GET", f"{SUB}/resourcegroups?{API}")[1]["value"]] == ["web"]


@pytest.mark.parametrize(
    ("name", "body", "target"),
    [
        ("bad%20name", {"location": "local"}, "name"),
        ("x" * 91, {"location": "local"}, "name"),
        ("ends.", {"location": "local"}, "name"),
        ("fine", {}, "location"),
        ("fine", {"location": "local", "tags": {"a": 1}}, "tags"),
        ("fine", {"location": "local", "sku": {}}, "sku"),
    ],
)
def test_a_bad_group_is_400_naming_the_field(served: Served, name: str, body: dict[str, Any], target: str) -> None:
    status, doc, _ = served.call("PUT", f"{group(name)}?{API}", body)
    assert status == 400 and doc["error"]["target"] == target, doc
    assert served.call("GET", f"{SUB}/resourcegroups?{API}")[1]["value"] == []


def test_a_resource_in_a_group_that_does_not_exist_is_resource_group_not_found(served: Served) -> None:
    path = f"{provider('nowhere')}/Microsoft.Compute/virtualMachineScaleSets/web?{API}"
    status, doc, _ = served.call("PUT", path, API_MODEL, make_group=False)
    assert (status, doc["error"]["code"]) == (404, "ResourceGroupNotFound"), doc
    assert served.call("PUT", f"{group('nowhere')}?{API}", {"location": "local"})[0] == 201
    assert served.call("GET", path)[0] == 404  # nothing was made by the refused PUT


def fill(served: Served, name: str) -> dict[str, str]:
    """A group holding one of each kind; returns the paths of what it holds."""
    assert served.call("PUT", f"{group(name)}?{API}", {"location": "local"})[0] == 201
    base = provider(name)
    paths = {
        "gallery": f"{base}/Microsoft.Compute/galleries/g{name}",
        "image": f"{base}/Microsoft.Compute/galleries/g{name}/images/tiny",
        "version": f"{base}/Microsoft.Compute/galleries/g{name}/images/tiny/versions/1.0.0",
        "balancer": f"{base}/Microsoft.Network/loadBalancers/lb{name}",
        "scale set": f"{base}/Microsoft.Compute/virtualMachineScaleSets/s{name}",
        "network": f"{base}/Microsoft.Network/virtualNetworks/v{name}",
        "managed image": f"{base}/Microsoft.Compute/images/i{name}",
    }
    identifier = {"publisher": "p", "offer": name, "sku": "tiny"}
    version = {
        "location": "local",
        "properties": {"storageProfile": {"source": {"overhaul": {"containerImage": "localhost/t:1"}}}},
    }
    model = copy.deepcopy(API_MODEL)
    model["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"] = identifier | {
        "version": "latest"
    }
    for key, body in (
        ("gallery", {"location": "local"}),
        ("image", {"properties": {"identifier": identifier}}),
        ("version", version),
        ("balancer", {"location": "local", "properties": {}}),
        ("scale set", model),
        ("network", {"location": "local", "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}}}),
        ("managed image", {"location": "local", "properties": {"overhaul": {"containerImage": "localhost/t:2"}}}),
    ):
        status, doc, _ = served.call("PUT", f"{paths[key]}?{API}", body)
        assert status in (200, 201), (key, doc)
    return paths


def test_deleting_a_group_removes_what_it_holds_and_nothing_else(served: Served) -> None:
    doomed, kept = fill(served, "doomed"), fill(served, "kept")
    status, _, headers = served.call("DELETE", f"{group('doomed')}?{API}")
    assert status == 202 and headers["Retry-After"] == "1"
    operation = headers["Location"].removeprefix(served.url)
    deadline = time.monotonic() + 30
    while (polled := served.call("GET", operation))[0] == 202:
        assert time.monotonic() < deadline, "the group was not deleted in time"
        time.sleep(0.1)
    assert polled[0] == 200
    assert served.call("GET", f"{group('doomed')}?{API}")[0] == 404
    for path in doomed.values():
        assert served.call("GET", f"{path}?{API}")[0] == 404, path
    for path in kept.values():
        assert served.call("GET", f"{path}?{API}")[0] == 200, path
    assert len(served.call("GET", f"{kept['scale set']}/virtualMachines?{API}")[1]["value"]) == 5
    status, doc, _ = served.call("DELETE", f"{group('doomed')}?{API}")
    assert (status, doc["error"]["code"]) == (404, "ResourceGroupNotFound")


def test_a_scale_set_delete_is_a_long_running_operation_any_poll_follows(served: Served) -> None:
    """Azure's DELETE of a scale set: 202, an operation InProgress until every instance is gone, then Succeeded;
    the scale set is then gone, a second DELETE finds nothing (204), and the operation is no resource of the group."""
    paths = fill(served, "web")
    vmss = paths["scale set"]
    status, body, headers = served.call("DELETE", f"{vmss}?{API}")
    assert status == 202 and body is None, body
    assert headers["Retry-After"] == "1" and headers["Location"] == headers["Azure-AsyncOperation"]
    operation = headers["Azure-AsyncOperation"].removeprefix(served.url)
    assert operation.startswith(f"{SUB}/providers/Microsoft.Compute/locations/local/operations/"), operation
    deadline = time.monotonic() + 30
    while (polled := served.call("GET", operation))[1]["status"] == "InProgress":
        assert polled[2]["Retry-After"] == "1"
        assert time.monotonic() < deadline, "the scale set was not deleted in time"
        time.sleep(0.05)
    assert polled[0] == 200 and polled[1]["status"] == "Succeeded" and polled[1]["endTime"], polled
    assert served.call("GET", f"{vmss}?{API}")[0] == 404
    assert served.call("DELETE", f"{vmss}?{API}")[0] == 204
    listed = served.call("GET", f"{SUB}/resourceGroups/web/resources?{API}")[1]["value"]
    assert all("operations" not in r["type"] for r in listed), listed
    status, doc, _ = served.call("GET", operation.rsplit("/", 1)[0] + f"/nope?{API}")
    assert (status, doc["error"]["code"]) == (404, "OperationNotFound")
