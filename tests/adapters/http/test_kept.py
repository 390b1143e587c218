"""Managed images (what `az sig image-version create --managed-image` names) and the network resources overhaul
keeps as written without acting upon them; a version re-PUT without overhaul's source keeps it (az's models drop
keys they do not know)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.builders import GALLERY, RG, seeded_serve
from tests.serve import API, Served

IMAGES = f"{RG}/providers/Microsoft.Compute/images"
VNET = f"{RG}/providers/Microsoft.Network/virtualNetworks/vnet"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with seeded_serve(tmp_path) as running:
        yield running


def managed_image(container_image: str) -> dict[str, Any]:
    """As `az image create` writes one, with what overhaul makes instances from."""
    return {
        "location": "local",
        "properties": {
            "storageProfile": {"osDisk": {"osType": "Linux", "osState": "Generalized"}},
            "hyperVGeneration": "V2",
            "overhaul": {"containerImage": container_image},
        },
    }


def test_a_managed_image_is_kept_and_a_version_is_made_from_it(served: Served) -> None:
    status, image, _ = served.call("PUT", f"{IMAGES}/base?{API}", managed_image("localhost/jammy:3.0.0"))
    assert status == 201, image
    assert image["properties"]["provisioningState"] == "Succeeded"
    assert image["properties"]["storageProfile"]["osDisk"]["osState"] == "Generalized"  # Azure's fields, verbatim
    assert [i["name"] for i in served.call("GET", f"{IMAGES}?{API}")[1]["value"]] == ["base"]
    body = {"location": "local", "properties": {"storageProfile": {"source": {"id": image["id"]}}}}
    status, version, _ = served.call("PUT", f"{GALLERY}/versions/3.0.0?{API}", body)
    assert status == 201, version
    source = version["properties"]["storageProfile"]["source"]
    assert source["overhaul"] == {"containerImage": "localhost/jammy:3.0.0"} and source["id"] == image["id"]
    # The version holds a copy: the image may change or go.
    assert served.call("DELETE", f"{IMAGES}/base?{API}")[0] == 200
    shown = served.call("GET", f"{GALLERY}/versions/3.0.0?{API}")[1]
    assert shown["properties"]["storageProfile"]["source"]["overhaul"]["containerImage"] == "localhost/jammy:3.0.0"


@pytest.mark.parametrize(
    ("body", "target"),
    [
        ({"location": "local", "properties": {}}, "properties.overhaul"),
        (managed_image("not a reference!"), "properties.overhaul.containerImage"),
        ({"location": "local", "properties": {"overhaul": {"diskImage": "relative"}}}, "properties.overhaul.diskImage"),
        ({"location": "local", "properties": []}, "properties"),
    ],
)
def test_a_bad_managed_image_is_400_naming_the_field(served: Served, body: dict[str, Any], target: str) -> None:
    status, doc, _ = served.call("PUT", f"{IMAGES}/bad?{API}", body)
    assert status == 400 and doc["error"]["target"] == target, doc
    assert served.call("GET", f"{IMAGES}/bad?{API}")[0] == 404


def test_a_version_naming_no_managed_image_is_400_naming_source_id(served: Served) -> None:
    body = {"location": "local", "properties": {"storageProfile": {"source": {"id": f"{IMAGES}/absent"}}}}
    status, doc, _ = served.call("PUT", f"{GALLERY}/versions/4.0.0?{API}", body)
    assert (status, doc["error"]["target"]) == (400, "properties.storageProfile.source.id"), doc
    assert served.call("GET", f"{GALLERY}/versions/4.0.0?{API}")[0] == 404


def test_a_version_re_put_without_overhauls_source_keeps_it(served: Served) -> None:
    """`az sig image-version update --set …excludeFromLatest=true` re-PUTs what its models kept of the GET."""
    doc = served.call("GET", f"{GALLERY}/versions/1.0.0?{API}")[1]
    del doc["properties"]["storageProfile"]["source"]["overhaul"]
    doc["properties"]["publishingProfile"]["excludeFromLatest"] = True
    status, updated, _ = served.call("PUT", f"{GALLERY}/versions/1.0.0?{API}", doc)
    assert status == 200, updated
    assert updated["properties"]["publishingProfile"]["excludeFromLatest"] is True
    assert updated["properties"]["storageProfile"]["source"]["overhaul"] == {"containerImage": "localhost/jammy:1.0.0"}
    # A new version still needs one.
    del doc["properties"]["storageProfile"]["source"]
    status, refused, _ = served.call("PUT", f"{GALLERY}/versions/5.0.0?{API}", doc)
    assert status == 400 and "containerImage" in refused["error"]["target"], refused


def test_network_resources_overhaul_does_not_act_on_are_kept_as_written(served: Served) -> None:
    space = {"addressPrefixes": ["10.0.0.0/16"]}
    body = {
        "location": "local",
        "tags": {"tier": "web"},
        "properties": {"addressSpace": space, "subnets": [{"name": "default"}]},
    }
    status, doc, _ = served.call("PUT", f"{VNET}?{API}", body)
    assert status == 201, doc
    assert doc["properties"]["addressSpace"] == space
    assert doc["properties"]["provisioningState"] == "Succeeded" and doc["tags"] == {"tier": "web"}
    assert doc["type"] == "Microsoft.Network/virtualNetworks" and doc["id"].endswith("/virtualNetworks/vnet")
    assert served.call("PUT", f"{VNET}?{API}", body)[0] == 200
    listed = served.call("GET", f"/subscriptions/subscription_id/providers/Microsoft.Network/virtualNetworks?{API}")
    assert [v["name"] for v in listed[1]["value"]] == ["vnet"]
    status, doc, _ = served.call("PUT", f"{VNET}?{API}", {"location": "local", "properties": "no"})
    assert status == 400 and doc["error"]["target"] == "properties"
    assert served.call("DELETE", f"{VNET}?{API}")[0] == 200
    assert served.call("DELETE", f"{VNET}?{API}")[0] == 204


def test_every_resource_is_listed_and_filtered_as_arm_lists_them(served: Served) -> None:
    """`az resource list` and the `$filter` az uses before a deployment."""
    body = {"location": "local", "tags": {"tier": "web"}, "properties": {}}
    assert served.call("PUT", f"{VNET}?{API}", body)[0] == 201
    listed = served.call("GET", f"{RG}/resources?{API}")[1]["value"]
    types = {item["type"] for item in listed}
    assert {"Microsoft.Network/virtualNetworks", "Microsoft.Compute/galleries"} <= types
    assert all(set(item) == {"id", "name", "type", "location", "tags"} for item in listed)

    def names(query: str) -> list[str]:
        encoded = urllib.parse.quote(query)
        status, doc, _ = served.call("GET", f"/subscriptions/subscription_id/resources?{API}&$filter={encoded}")
        assert status == 200, doc
        return [item["name"] for item in doc["value"]]

    assert names("resourceType eq 'Microsoft.Network/virtualNetworks'") == ["vnet"]
    assert names("resourceGroup eq 'myresourcegroup' and name eq 'VNET'") == ["vnet"]
    assert names("tagName eq 'tier' and tagValue eq 'web'") == ["vnet"]
    assert names("substringof('vn', name)") == ["vnet"]
    assert names("resourceGroup eq 'another'") == []
    wrong = urllib.parse.quote("name ne 'x'")
    status, doc, _ = served.call("GET", f"/subscriptions/subscription_id/resources?{API}&$filter={wrong}")
    assert (status, doc["error"]["target"]) == (400, "$filter")
