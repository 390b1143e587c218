"""Host groups and hosts as documents (core/hosts.py): what is kept, and every refusal naming its field."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from overhaul.core.arm_json import ModelError
from overhaul.core.hosts import parse_engine_url, parse_host, parse_host_group, parse_host_key


def key_line(kind: str = "ssh-ed25519", named: str | None = None) -> str:
    """An OpenSSH public key line whose blob names ``named`` (the line's own type unless told)."""
    name = (named or kind).encode()
    blob = struct.pack(">I", len(name)) + name + struct.pack(">I", 32) + bytes(range(32))
    return f"{kind} {base64.b64encode(blob).decode()} root@host"


def host(ours: dict[str, Any], **top: Any) -> Any:
    return parse_host(
        {"properties": {"overhaul": ours}, **top}, group="g", name="h1", resource_group="rg", subscription="s"
    )


SSH = {"engine": "ssh://core@10.0.0.7:2222/run/podman/podman.sock", "sshKey": "/etc/overhaul/id", "hostKey": key_line()}


def test_an_ssh_host_keeps_its_engine_key_and_publishes_on_its_own_address() -> None:
    parsed = host(SSH, sku={"name": "DSv3-Type1"}, tags={"rack": "a"})
    engine = parsed.engine
    assert (engine.scheme, engine.user, engine.address, engine.port, engine.socket) == (
        "ssh",
        "core",
        "10.0.0.7",
        2222,
        "/run/podman/podman.sock",
    )
    assert parsed.publish_address == "10.0.0.7"
    assert parsed.host_key == " ".join(key_line().split()[:2])  # the comment is not part of the key
    assert parsed.ports == (20000, 29999)
    doc = parsed.to_json()
    assert doc["sku"] == {"name": "DSv3-Type1"} and doc["tags"] == {"rack": "a"}
    assert doc["type"] == "Microsoft.Compute/hostGroups/hosts"
    assert doc["id"].endswith("/resourceGroups/rg/providers/Microsoft.Compute/hostGroups/g/hosts/h1")
    again = parse_host(doc, group="g", name="h1", resource_group="rg", subscription="s")
    assert again == parsed


def test_a_local_engine_publishes_on_loopback_unless_told() -> None:
    assert host({"engine": "unix:///run/podman/podman.sock"}).publish_address == "127.0.0.1"
    told = host({"engine": "unix:///run/docker.sock", "publishAddress": "127.0.0.3", "hostPorts": "30000-30099"})
    assert (told.publish_address, told.ports) == ("127.0.0.3", (30000, 30099))
    assert host({"engine": "tcp://127.0.0.1:2375"}).tls is None  # loopback TCP needs no TLS


@pytest.mark.parametrize(
    ("ours", "field", "words"),
    [
        ({}, "properties.overhaul.engine", "is required"),
        ({"engine": "http://h:2375"}, "properties.overhaul.engine", "scheme 'http'"),
        ({"engine": "unix://relative.sock"}, "properties.overhaul.engine", "absolute socket path"),
        ({**SSH, "engine": "ssh://core@10.0.0.7"}, "properties.overhaul.engine", "socket path"),
        ({**SSH, "engine": "ssh://10.0.0.7/run/p.sock"}, "properties.overhaul.engine", "names the user"),
        ({**SSH, "engine": "ssh://core@10.0.0.7:99999/p.sock"}, "properties.overhaul.engine", "not a URL"),
        ({"engine": "tcp://10.0.0.7"}, "properties.overhaul.engine", "tcp://host:port"),
        ({"engine": "tcp://10.0.0.7:2376"}, "properties.overhaul.tls", "is required"),
        ({"engine": "tcp://10.0.0.7:2376", "tls": {"caCertificate": "/ca"}}, "properties.overhaul.tls.certificate", ""),
        ({"engine": "unix:///p.sock", "tls": {}}, "properties.overhaul.tls", "tcp:// engines only"),
        ({**SSH, "hostKey": None}, "properties.overhaul.hostKey", "never learnt"),
        ({**SSH, "hostKey": "ssh-ed25519"}, "properties.overhaul.hostKey", "must start with"),
        ({**SSH, "hostKey": "ssh-ed25519 %%%%"}, "properties.overhaul.hostKey", "not base64"),
        ({**SSH, "hostKey": key_line("ssh-ed25519", "ssh-rsa")}, "properties.overhaul.hostKey", "'ssh-rsa' key"),
        ({**SSH, "sshKey": None}, "properties.overhaul.sshKey", "absolute file path"),
        ({**SSH, "sshKey": "id_ed25519"}, "properties.overhaul.sshKey", "absolute file path"),
        ({**SSH, "hostPorts": "80-90"}, "properties.overhaul.hostPorts", "1024-65535"),
        ({**SSH, "hostPorts": "30000-20000"}, "properties.overhaul.hostPorts", "FIRST-LAST"),
        ({**SSH, "hostPorts": "20000-70000"}, "properties.overhaul.hostPorts", "1024-65535"),
        ({**SSH, "publishAddress": "not an address"}, "properties.overhaul.publishAddress", "host name"),
        ({**SSH, "callTimeout": 0}, "properties.overhaul.callTimeout", "seconds"),
    ],
)
def test_a_bad_host_is_refused_naming_the_field(ours: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ModelError) as caught:
        host(ours)
    assert caught.value.path == field
    assert words in str(caught.value)


def test_a_host_without_our_section_or_with_a_negative_fault_domain_is_refused() -> None:
    with pytest.raises(ModelError, match=r"properties\.overhaul"):
        parse_host({"properties": {}}, group="g", name="h", resource_group="rg", subscription="s")
    with pytest.raises(ModelError, match=r"properties\.platformFaultDomain"):
        host(SSH, properties={"platformFaultDomain": -1, "overhaul": SSH})


def test_an_engine_url_keeps_what_it_says() -> None:
    assert parse_engine_url("unix:///tmp/p.sock").socket == "/tmp/p.sock"
    assert parse_engine_url("ssh://u@h.example/p.sock").port == 22
    assert parse_engine_url("tcp://[::1]:2376").address == "::1"


def test_a_key_line_of_each_type_is_accepted() -> None:
    for kind in ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"):
        assert parse_host_key(key_line(kind)).startswith(kind + " ")


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"zones": ["1", "2"], "properties": {"platformFaultDomainCount": 1}}, "zones"),
        ({"zones": "1", "properties": {"platformFaultDomainCount": 1}}, "zones"),
        ({"properties": {}}, "properties.platformFaultDomainCount"),
        ({"properties": {"platformFaultDomainCount": 4}}, "properties.platformFaultDomainCount"),
        ({"properties": {"platformFaultDomainCount": True}}, "properties.platformFaultDomainCount"),
        (
            {"properties": {"platformFaultDomainCount": 2, "supportAutomaticPlacement": "yes"}},
            "properties.supportAutomaticPlacement",
        ),
    ],
)
def test_a_bad_host_group_is_refused_naming_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(ModelError) as caught:
        parse_host_group(doc, name="g", resource_group="rg", subscription="s")
    assert caught.value.path == field


def test_a_host_group_lists_its_hosts_and_its_one_zone() -> None:
    doc = {"location": "edge", "zones": ["2"], "tags": {"a": "b"}, "properties": {"platformFaultDomainCount": 2}}
    group = parse_host_group(doc, name="g", resource_group="rg", subscription="s")
    out = group.to_json(["/x/hosts/h1"])
    assert out["zones"] == ["2"] and out["tags"] == {"a": "b"} and out["location"] == "edge"
    assert out["properties"]["hosts"] == [{"id": "/x/hosts/h1"}]
    assert out["properties"]["supportAutomaticPlacement"] is False
