"""Host groups and hosts over the API (Azure's Dedicated Hosts' shape) and through the real Azure SDK: what is
kept, fault domains spread, and every refusal naming its field or the resource in the way."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import models as m

from tests.azure import compute_client
from tests.builders import API_MODEL, GALLERY, RG, VMSS, seeded_serve, wait_for
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


def publish_in(served: Served, version: str, *regions: str) -> None:
    body = {
        "location": "local",
        "properties": {
            "publishingProfile": {"targetRegions": [{"name": r} for r in regions]},
            "storageProfile": {"source": {"overhaul": {"containerImage": f"localhost/jammy:{version}"}}},
        },
    }
    assert served.call("PUT", f"{GALLERY}/versions/{version}?{API}", body)[0] in (200, 201)
    # Copied to the hosts of its regions (at once: the simulated hosts' engines have every image).
    expanded = f"{GALLERY}/versions/{version}?{API}&$expand=ReplicationStatus"

    def replicated() -> bool:
        return bool(
            served.call("GET", expanded)[1]["properties"]["replicationStatus"]["aggregatedState"] == "Completed"
        )

    wait_for(replicated)


def three_zones(served: Served) -> dict[str, str]:
    """A host group per zone of location edge, a (simulated) host each; their ids by zone."""
    ids = {}
    for zone in ("1", "2", "3"):
        body = {"location": "edge", "zones": [zone], "properties": {"platformFaultDomainCount": 1}}
        assert served.call("PUT", f"{GROUPS}/z{zone}?{API}", body)[0] == 201
        ours = {"engine": f"unix:///run/z{zone}.sock", "publishAddress": f"127.0.0.{int(zone) + 1}"}
        status, doc, _ = put_host(served, f"h{zone}", ours, group_name=f"z{zone}")
        assert status == 201, doc
        ids[zone] = doc["id"]
    return ids


def zonal_model(capacity: int, zones: list[str], **props: Any) -> dict[str, Any]:
    model = copy.deepcopy(API_MODEL)
    model.update(location="edge", zones=zones, sku={"name": "Standard_Container", "capacity": capacity})
    model["properties"].update(upgradePolicy={"mode": "Rolling"}, **props)
    return model


def placed(served: Served) -> dict[str, list[int]]:
    instances = served.call("GET", f"{VMSS}/virtualMachines?{API}")[1]["value"]
    by_host: dict[str, list[int]] = {}
    for doc in instances:
        by_host.setdefault(doc["properties"]["overhaul"]["host"], []).append(int(doc["instanceId"]))
    return by_host


def test_instances_are_placed_over_the_zones_hosts_and_stay_there_through_an_upgrade(served: Served) -> None:
    ids = three_zones(served)
    publish_in(served, "1.0.0", "local", "edge")
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", zonal_model(6, ["1", "2", "3"]))
    assert status == 201, doc
    before = placed(served)
    assert before == {ids["1"]: [0, 3], ids["2"]: [1, 4], ids["3"]: [2, 5]}
    listed = served.call("GET", f"{VMSS}/virtualMachines?{API}")[1]["value"]
    addresses = {d["properties"]["overhaul"]["address"] for d in listed}
    assert addresses == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}  # each instance where its host publishes
    assert [d["zones"] for d in listed] == [["1"], ["2"], ["3"]] * 2  # as Azure's instances show theirs
    # Scaled out, the new instances go where the zones are emptiest; scaled back, they leave.
    assert served.call("PATCH", f"{VMSS}?{API}", {"sku": {"capacity": 8}})[0] == 200
    after = placed(served)
    assert {h: ids_ for h, ids_ in after.items()} == {ids["1"]: [0, 3, 6], ids["2"]: [1, 4, 7], ids["3"]: [2, 5]}
    # A rolling upgrade moves every instance onto 2.0.0 on its own host.
    publish_in(served, "2.0.0", "local", "edge")
    assert served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0] == 202
    wait_for(
        lambda: (
            served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")[1]["properties"]["runningStatus"]["code"]
            == "Completed"
        )
    )
    versions = {
        d["properties"]["storageProfile"]["imageReference"]["exactVersion"]
        for d in served.call("GET", f"{VMSS}/virtualMachines?{API}")[1]["value"]
    }
    assert versions == {"2.0.0"} and placed(served) == after
    # A host holding instances stays until they are gone.
    status, doc, _ = served.call("DELETE", f"{GROUPS}/z3/hosts/h3?{API}")
    assert status == 409 and doc["error"]["code"] == "HostInUse" and "myScaleSet_2" in doc["error"]["message"]


def test_a_scale_set_no_host_can_take_is_refused_before_anything_is_kept(served: Served) -> None:
    three_zones(served)
    publish_in(served, "1.0.0", "local", "edge")
    for body, field in (
        (zonal_model(3, ["4"]), "zones"),
        (zonal_model(3, ["1"], hostGroup={"id": f"{GROUPS}/nogroup"}), "properties.hostGroup.id"),
    ):
        status, doc, _ = served.call("PUT", f"{VMSS}?{API}", body)
        assert status == 400 and doc["error"]["target"] == field, doc
        assert served.call("GET", f"{VMSS}?{API}")[0] == 404
    # A host group names where instances go, whatever zones the location has.
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", zonal_model(2, [], hostGroup={"id": f"{GROUPS}/z2"}))
    assert status == 201, doc
    assert list(placed(served)) == [
        doc["id"].split("/providers/")[0] + "/providers/Microsoft.Compute/hostGroups/z2/hosts/h2"
    ]


def test_instances_beyond_the_hosts_port_ranges_are_refused_naming_the_hosts(served: Served) -> None:
    body = {"location": "edge", "properties": {"platformFaultDomainCount": 1}}
    assert served.call("PUT", f"{GROUPS}/small?{API}", body)[0] == 201
    ours = {"engine": "unix:///run/small.sock", "hostPorts": "30000-30004"}  # five ports: two instances of two
    assert put_host(served, "h", ours, group_name="small")[0] == 201
    publish_in(served, "1.0.0", "local", "edge")
    model = zonal_model(3, [])
    model["properties"]["virtualMachineProfile"]["overhaul"] = {"ports": [8080, 8090]}
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", model)
    assert status == 409 and doc["error"]["code"] == "PortsExhausted", doc
    assert "small/h (30000-30004)" in doc["error"]["message"] and doc["error"]["target"] == "sku.capacity"
    assert served.call("GET", f"{VMSS}?{API}")[0] == 404  # nothing was kept
    model["sku"]["capacity"] = 2
    assert served.call("PUT", f"{VMSS}?{API}", model)[0] == 201
    ports = sorted(
        p
        for d in served.call("GET", f"{VMSS}/virtualMachines?{API}")[1]["value"]
        for p in d["properties"]["overhaul"]["hostPorts"].values()
    )
    assert ports == [30000, 30001, 30002, 30003]
    status, doc, _ = served.call("PATCH", f"{VMSS}?{API}", {"sku": {"capacity": 3}})
    assert status == 409 and doc["error"]["code"] == "PortsExhausted", doc
    assert len(served.call("GET", f"{VMSS}/virtualMachines?{API}")[1]["value"]) == 2
    assert served.call("GET", f"{VMSS}?{API}")[1]["sku"]["capacity"] == 2


def test_a_versions_copies_on_the_hosts_are_shown_as_azures_replication_status(served: Served) -> None:
    group(served, count=1)
    for name in ("h1", "h2"):
        assert put_host(served, name, {"engine": f"unix:///run/{name}.sock"})[0] == 201
    source = {"overhaul": {"containerImage": "localhost/tiny:2.0.0"}}
    body = {
        "properties": {
            "publishingProfile": {"targetRegions": [{"name": "local"}, {"name": "edge"}]},
            "storageProfile": {"source": source},
        }
    }
    assert served.call("PUT", f"{GALLERY}/versions/2.0.0?{API}", body)[0] == 201
    plain = served.call("GET", f"{GALLERY}/versions/2.0.0?{API}")[1]
    assert "replicationStatus" not in plain["properties"]  # only when asked for, as Azure's
    rg, gallery, image = GALLERY.split("/")[4], GALLERY.split("/")[-3], GALLERY.split("/")[-1]
    with compute_client(served, RG.split("/")[2]) as client:

        def status() -> Any:
            return client.gallery_image_versions.get(rg, gallery, image, "2.0.0", expand="ReplicationStatus")

        # The simulated hosts' engines (--engine memory) have every image: each copy completes at once.
        wait_for(lambda: status().replication_status.aggregated_state == "Completed")
        summary = status().replication_status.summary
        assert [(s.region, s.state, s.progress) for s in summary] == [
            ("local", "Completed", 100),
            ("edge", "Completed", 100),
        ]
    doc = served.call("GET", f"{GALLERY}/versions/2.0.0?{API}&$expand=ReplicationStatus")[1]
    assert [(r["host"].rsplit("/", 1)[1], r["state"]) for r in doc["properties"]["overhaul"]["replicas"]] == [
        ("h1", "Completed"),
        ("h2", "Completed"),
    ]
