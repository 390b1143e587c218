"""Host groups and hosts over the API (Azure's Dedicated Hosts' shape) and through the real Azure SDK: what is
kept, fault domains spread, and every refusal naming its field or the resource in the way."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import models as m

from tests.azure import compute_client
from tests.builders import RG, seeded_serve
from tests.serve import API, Served

GROUPS = f"{RG}/providers/Microsoft.Compute/hostGroups"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with seeded_serve(tmp_path) as running:
        yield running


def host_key(tmp_path: Path) -> str:
    """A real host key, as ssh-keygen makes one for sshd."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "hk")], check=True, timeout=30)
    return (tmp_path / "hk.pub").read_text()


def group(served: Served, name: str = "rack1", count: int = 2, **extra: Any) -> dict[str, Any]:
    body = {"location": "edge", "zones": ["1"], "properties": {"platformFaultDomainCount": count}, **extra}
    status, doc, _ = served.call("PUT", f"{GROUPS}/{name}?{API}", body)
    assert status in (200, 201), doc
    return dict(doc)


def put_host(served: Served, name: str, ours: dict[str, Any], group_name: str = "rack1", **top: Any) -> Any:
    return served.call("PUT", f"{GROUPS}/{group_name}/hosts/{name}?{API}", {"properties": {"overhaul": ours}, **top})


def test_hosts_are_kept_listed_and_spread_over_fault_domains(served: Served, tmp_path: Path) -> None:
    group(served)
    key = host_key(tmp_path)
    ssh = {"engine": "ssh://root@127.0.0.2:22022/run/p1.sock", "sshKey": "/etc/overhaul/id", "hostKey": key}
    status, doc, _ = put_host(served, "h1", ssh, sku={"name": "DSv3-Type1"}, tags={"rack": "1"})
    assert status == 201, doc
    assert doc["location"] == "edge"  # the group's, as none was sent
    assert doc["properties"]["platformFaultDomain"] == 0
    assert doc["properties"]["overhaul"]["publishAddress"] == "127.0.0.2"
    assert doc["properties"]["overhaul"]["hostKey"] == " ".join(key.split()[:2])
    assert (doc["sku"], doc["tags"]) == ({"name": "DSv3-Type1"}, {"rack": "1"})
    second = put_host(served, "h2", {"engine": "unix:///run/p2.sock"})[1]
    third = put_host(served, "h3", {"engine": "unix:///run/p3.sock"})[1]
    assert [second["properties"]["platformFaultDomain"], third["properties"]["platformFaultDomain"]] == [1, 0]
    listed = served.call("GET", f"{GROUPS}/rack1/hosts?{API}")[1]["value"]
    assert [h["name"] for h in listed] == ["h1", "h2", "h3"]
    shown = served.call("GET", f"{GROUPS}/rack1?{API}")[1]
    assert [h["id"] for h in shown["properties"]["hosts"]] == [h["id"] for h in listed]
    assert shown["zones"] == ["1"]
    # A PUT again updates it, in place, keeping its fault domain; the name keeps its first spelling.
    status, again, _ = put_host(served, "H1", {**ssh, "hostPorts": "30000-30999"})
    assert status == 200 and again["name"] == "h1" and again["properties"]["platformFaultDomain"] == 0
    assert served.call("GET", f"{GROUPS}/rack1/hosts/h1?{API}")[1]["properties"]["overhaul"]["hostPorts"] == (
        "30000-30999"
    )


def test_refusals_name_the_field_or_what_is_in_the_way(served: Served) -> None:
    group(served)
    assert put_host(served, "h1", {"engine": "unix:///run/p1.sock"})[0] == 201
    cases: list[tuple[Any, int, str, str]] = [
        (put_host(served, "h9", {"engine": "unix:///run/p1.sock"}), 409, "EngineInUse", "rack1/h1"),
        (put_host(served, "h9", {"engine": "ftp://x/y"}), 400, "properties.overhaul.engine", "scheme"),
        (put_host(served, "h9", {"engine": "unix:///p9.sock"}, location="elsewhere"), 400, "location", "edge"),
        (
            put_host(
                served, "h9", {"engine": "unix:///p9.sock"}, properties={"platformFaultDomain": 2, "overhaul": {}}
            ),
            400,
            "properties.overhaul.engine",
            "required",
        ),
        (
            served.call(
                "PUT",
                f"{GROUPS}/rack1/hosts/h9?{API}",
                {"properties": {"platformFaultDomain": 2, "overhaul": {"engine": "unix:///p9.sock"}}},
            ),
            400,
            "properties.platformFaultDomain",
            "0-1",
        ),
        (
            served.call(
                "PUT",
                f"{GROUPS}/rack1/hosts/h1?{API}",
                {"properties": {"platformFaultDomain": 1, "overhaul": {"engine": "unix:///run/p1.sock"}}},
            ),
            400,
            "properties.platformFaultDomain",
            "keeps its fault domain",
        ),
        (put_host(served, "h9", {"engine": "unix:///p9.sock"}, group_name="nogroup"), 404, "ResourceNotFound", ""),
        (served.call("DELETE", f"{GROUPS}/rack1?{API}"), 409, "CannotDeleteResource", "h1"),
        (
            served.call(
                "PUT", f"{GROUPS}/rack1?{API}", {"location": "edge", "properties": {"platformFaultDomainCount": 2}}
            ),
            400,
            "zones",
            "has hosts",
        ),
        (served.call("PUT", f"{GROUPS}/rack2?{API}", {"zones": ["1", "2"]}), 400, "zones", "one zone"),
    ]
    for (status, doc, _), wanted, where, words in cases:
        error = doc["error"]
        assert status == wanted, doc
        assert where in (error.get("target"), error["code"]), doc
        assert words in error["message"], doc
    # Nothing refused was kept: the group still has its one host and its zone.
    assert [h["name"] for h in served.call("GET", f"{GROUPS}/rack1/hosts?{API}")[1]["value"]] == ["h1"]
    assert served.call("GET", f"{GROUPS}/rack1?{API}")[1]["zones"] == ["1"]


def test_deleting_a_host_then_its_group(served: Served) -> None:
    group(served)
    assert put_host(served, "h1", {"engine": "unix:///run/p1.sock"})[0] == 201
    assert served.call("DELETE", f"{GROUPS}/rack1/hosts/h1?{API}")[0] == 200
    assert served.call("DELETE", f"{GROUPS}/rack1/hosts/h1?{API}")[0] == 204
    assert served.call("GET", f"{GROUPS}/rack1/hosts/h1?{API}")[0] == 404
    # Its engine is free for another host now.
    assert put_host(served, "h2", {"engine": "unix:///run/p1.sock"})[0] == 201
    assert served.call("DELETE", f"{GROUPS}/rack1/hosts/h2?{API}")[0] == 200
    assert served.call("DELETE", f"{GROUPS}/rack1?{API}")[0] == 200
    assert served.call("GET", f"{GROUPS}/rack1?{API}")[0] == 404


def test_the_azure_sdk_manages_host_groups_and_hosts(served: Served) -> None:
    rg = RG.rsplit("/", 1)[1]
    with compute_client(served, RG.split("/")[2]) as client:
        made = client.dedicated_host_groups.create_or_update(
            rg,
            "sdkgroup",
            m.DedicatedHostGroup(
                location="edge",
                zones=["2"],
                properties=m.DedicatedHostGroupProperties(
                    platform_fault_domain_count=1, support_automatic_placement=True
                ),
            ),
        )
        assert made.zones == ["2"] and made.properties is not None
        assert made.properties.platform_fault_domain_count == 1
        host = m.DedicatedHost(
            location="edge",
            sku=m.Sku(name="DSv3-Type1"),
            properties=m.DedicatedHostProperties(platform_fault_domain=0),
        )
        host["properties"]["overhaul"] = {"engine": "unix:///run/sdk.sock"}  # ours, as raw JSON beside Azure's
        created = client.dedicated_hosts.begin_create_or_update(rg, "sdkgroup", "sdkhost", host).result()
        assert created.name == "sdkhost" and created.properties is not None
        assert created.properties.platform_fault_domain == 0
        assert created.properties.as_dict()["overhaul"]["engine"] == "unix:///run/sdk.sock"
        assert [h.name for h in client.dedicated_hosts.list_by_host_group(rg, "sdkgroup")] == ["sdkhost"]
        shown = client.dedicated_host_groups.get(rg, "sdkgroup")
        assert shown.properties is not None
        assert [h.id for h in shown.properties.hosts or []] == [created.id]
        assert [g.name for g in client.dedicated_host_groups.list_by_subscription()] == ["sdkgroup"]
        with pytest.raises(HttpResponseError) as refused:
            client.dedicated_host_groups.delete(rg, "sdkgroup")
        assert refused.value.status_code == 409
        client.dedicated_hosts.begin_delete(rg, "sdkgroup", "sdkhost").result()
        client.dedicated_host_groups.delete(rg, "sdkgroup")
        with pytest.raises(ResourceNotFoundError):
            client.dedicated_host_groups.get(rg, "sdkgroup")
