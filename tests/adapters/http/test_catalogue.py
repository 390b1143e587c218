"""The VM image and extension catalogue of a location, walked as `az vm image list --all` and `az vmss extension
set` walk Azure's: publishers, offers, skus, versions, one version (or latest); extension types and versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import publish, seeded_serve
from tests.serve import API, Served

LOCATION = "/subscriptions/subscription_id/providers/Microsoft.Compute/locations/local"
PUBLISHER = f"{LOCATION}/publishers/Canonical/artifacttypes/vmimage"
SKU = f"{PUBLISHER}/offers/0001-com-ubuntu-server-jammy/skus/22_04-lts"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with seeded_serve(tmp_path) as running:
        publish(running, "1.1.0")
        publish(running, "2.0.0", exclude=True)
        yield running


def names(served: Served, path: str) -> list[str]:
    status, doc, _ = served.call("GET", f"{path}?{API}")
    assert status == 200, doc
    return [item["name"] for item in doc]


def test_the_catalogue_walks_down_to_one_version(served: Served) -> None:
    assert names(served, f"{LOCATION}/publishers") == [
        "Canonical",
        "Microsoft.Azure.Extensions",
        "Microsoft.ManagedServices",
    ]
    assert names(served, f"{PUBLISHER}/offers") == ["0001-com-ubuntu-server-jammy"]
    assert names(served, f"{PUBLISHER}/offers/0001-com-ubuntu-server-jammy/skus") == ["22_04-lts"]
    assert names(served, f"{SKU}/versions") == ["1.0.0", "1.1.0", "2.0.0"]
    status, one, _ = served.call("GET", f"{SKU}/versions/1.1.0?{API}")
    assert status == 200 and one["name"] == "1.1.0"
    assert one["properties"]["osDiskImage"] == {"operatingSystem": "Linux"}
    assert one["id"].lower().endswith("/skus/22_04-lts/versions/1.1.0")
    # latest skips the version excluded from it, as Azure's does.
    assert served.call("GET", f"{SKU}/versions/latest?{API}")[1]["name"] == "1.1.0"
    # Names are compared as ARM compares them: in any case.
    assert names(served, f"{LOCATION}/publishers/canonical/artifacttypes/vmimage/offers") == [
        "0001-com-ubuntu-server-jammy"
    ]


@pytest.mark.parametrize(
    "path",
    [
        f"{SKU}/versions/9.9.9",
        f"{PUBLISHER.replace('/locations/local/', '/locations/elsewhere/')}/offers/0001-com-ubuntu-server-jammy"
        "/skus/22_04-lts/versions/1.0.0",
        f"{SKU.replace('/subscription_id/', '/another/')}/versions/1.0.0",
    ],
)
def test_a_version_not_in_the_location_or_scope_is_404_image_not_found(served: Served, path: str) -> None:
    status, doc, _ = served.call("GET", f"{path}?{API}")
    assert status == 404 and doc["error"]["code"] == "ImageNotFound", doc


def test_an_empty_location_lists_only_the_extension_publishers(served: Served) -> None:
    assert names(served, f"{LOCATION.replace('/local', '/elsewhere')}/publishers") == [
        "Microsoft.Azure.Extensions",
        "Microsoft.ManagedServices",
    ]


def test_the_extensions_overhaul_runs_are_listed_with_their_versions(served: Served) -> None:
    health = f"{LOCATION}/publishers/Microsoft.ManagedServices/artifacttypes/vmextension/types"
    assert names(served, health) == ["ApplicationHealthLinux"]
    assert names(served, f"{health}/ApplicationHealthLinux/versions") == ["1.0", "2.0"]
    status, doc, _ = served.call("GET", f"{health}/applicationhealthlinux/versions/2.0?{API}")
    assert status == 200 and doc["properties"]["vmScaleSetEnabled"] is True
    script = f"{LOCATION}/publishers/Microsoft.Azure.Extensions/artifacttypes/vmextension/types"
    assert names(served, script) == ["CustomScript"]
    assert served.call("GET", f"{health}/Unknown/versions?{API}")[0] == 404
    assert served.call("GET", f"{health}/ApplicationHealthLinux/versions/9.0?{API}")[0] == 404
