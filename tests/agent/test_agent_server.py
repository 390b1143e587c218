"""The agent's endpoints, served by a running agent that probes a real local application."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from overhaul.localhost import free_port
from overhaul_agent.metadata import InstanceMetadata
from overhaul_agent.probe_body import HealthState
from overhaul_agent.server import TcpHealthPort
from tests.conftest import FakeApp, StartAgent, fast_settings


async def test_health_follows_the_application(fake_app: FakeApp, start_agent: StartAgent) -> None:
    fake_app.set_state("Unhealthy")
    agent = await start_agent(fast_settings(fake_app.port, numberOfProbes=2))
    doc = await agent.wait_state("Unhealthy")
    status, doc, _ = await agent.health()
    assert status == 503
    assert doc["reason"].startswith("2 consecutive probe(s) Unhealthy")
    fake_app.set_state("Healthy", custom_metrics=json.dumps({"rollingUpgrade": {"PhaseOrderingNumber": 3}}))
    await agent.wait_state("Healthy")
    status, doc, etag = await agent.health()
    assert status == 200
    assert re.fullmatch(r'"[0-9a-f]{8}\.\d+"', etag)
    assert doc["customMetrics"] == {"rollingUpgrade": {"PhaseOrderingNumber": 3, "SkipUpgrade": False}}
    assert doc["lastProbe"]["statusCode"] == 200
    for key in ("since", "extensions", "imageReference", "instanceId", "resources"):
        assert key in doc
    assert doc["resources"]["memory"]["totalBytes"] > 0


async def test_initializing_during_grace_is_503(fake_app: FakeApp, start_agent: StartAgent) -> None:
    fake_app.status = 500
    agent = await start_agent(fast_settings(fake_app.port, gracePeriod=30))
    status, doc, _ = await agent.health()
    assert status == 503
    assert doc["applicationHealthState"] == "Initializing"


async def test_grace_expiry_commits_unknown_for_http(fake_app: FakeApp, start_agent: StartAgent) -> None:
    fake_app.status = 500
    agent = await start_agent(fast_settings(fake_app.port, gracePeriod=0.5))
    doc = await agent.wait_state("Unknown")
    assert "grace period expired" in doc["reason"]


async def test_blocking_query_answers_within_100ms_of_a_change(fake_app: FakeApp, start_agent: StartAgent) -> None:
    agent = await start_agent(fast_settings(fake_app.port))
    await agent.wait_state("Healthy")
    _, _, etag = await agent.health()
    changed_at: list[float] = []
    agent.agent.board.add_listener(lambda board: changed_at.append(time.monotonic()))

    async def watch() -> tuple[float, dict[str, object], str]:
        _, doc, new_etag = await agent.health(f"?wait=30&etag={etag.strip(chr(34))}")
        return time.monotonic(), doc, new_etag

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    assert not watcher.done()  # held: nothing changed yet
    fake_app.set_state("Unhealthy")
    answered_at, doc, new_etag = await asyncio.wait_for(watcher, 10)
    assert doc["applicationHealthState"] == "Unhealthy"
    assert new_etag != etag
    assert answered_at - changed_at[0] < 0.1


async def test_blocking_query_answers_at_once_for_an_old_etag(fake_app: FakeApp, start_agent: StartAgent) -> None:
    agent = await start_agent(fast_settings(fake_app.port))
    await agent.wait_state("Healthy")
    started = time.monotonic()
    _, doc, _ = await agent.health('?wait=30&etag="00000000.1"')
    assert time.monotonic() - started < 1
    assert doc["applicationHealthState"] == "Healthy"


async def test_blocking_query_times_out_with_the_same_etag(fake_app: FakeApp, start_agent: StartAgent) -> None:
    agent = await start_agent(fast_settings(fake_app.port))
    await agent.wait_state("Healthy")
    _, _, etag = await agent.health()
    started = time.monotonic()
    _, _, after = await agent.health(f"?wait=0.4&etag={etag}")
    assert time.monotonic() - started >= 0.39
    assert after == etag  # probes confirming the same state do not bump the version


@pytest.mark.parametrize(
    ("query", "field"),
    [("?wait=soon&etag=1", "wait"), ("?wait=-1&etag=1", "wait"), ("?wait=5&etag=abc", "etag")],
)
async def test_bad_blocking_query_is_400_naming_the_field(
    fake_app: FakeApp, start_agent: StartAgent, query: str, field: str
) -> None:
    agent = await start_agent(fast_settings(fake_app.port))
    async with agent.session.get(f"{agent.url}/health{query}") as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["message"].startswith(f"{field}:")


async def test_unknown_path_is_404(fake_app: FakeApp, start_agent: StartAgent) -> None:
    agent = await start_agent(fast_settings(fake_app.port))
    async with agent.session.get(f"{agent.url}/nope") as resp:
        assert resp.status == 404
        assert "error" in await resp.json()


async def tcp_accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except ConnectionRefusedError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def test_tcp_health_port_accepts_only_while_healthy(fake_app: FakeApp, start_agent: StartAgent) -> None:
    fake_app.set_state("Unhealthy")
    tcp_port = free_port()
    agent = await start_agent(fast_settings(fake_app.port, gracePeriod=30), tcp_port=tcp_port)
    assert not await tcp_accepts(tcp_port)  # Initializing
    await agent.wait_state("Unhealthy")
    assert not await tcp_accepts(tcp_port)
    fake_app.set_state("Healthy")
    await agent.wait_state("Healthy")
    assert await tcp_accepts(tcp_port)
    fake_app.set_state("Unhealthy")
    await agent.wait_state("Unhealthy")
    assert not await tcp_accepts(tcp_port)


async def test_hung_application_does_not_slow_health(fake_app: FakeApp, start_agent: StartAgent) -> None:
    agent = await start_agent(fast_settings(fake_app.port, intervalInSeconds=2, numberOfProbes=1))
    await agent.wait_state("Healthy")
    fake_app.hang = True
    slowest = 0.0
    deadline = time.monotonic() + 4.5  # spans two hung probes of 1.6 s each
    while time.monotonic() < deadline:
        started = time.monotonic()
        await agent.health()
        slowest = max(slowest, time.monotonic() - started)
        await asyncio.sleep(0.05)
    _, doc, _ = await agent.health()
    assert doc["applicationHealthState"] == "Unknown"
    assert "within" in doc["lastProbe"]["detail"]
    assert slowest < 0.5


async def test_metrics_parse_and_follow_conventions(fake_app: FakeApp, start_agent: StartAgent) -> None:
    fake_app.set_state("Healthy", custom_metrics=json.dumps({"rollingUpgrade": {"PhaseOrderingNumber": 1}}))
    agent = await start_agent(fast_settings(fake_app.port))
    await agent.wait_state("Healthy")
    async with agent.session.get(f"{agent.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ours = [name for name in families if name.startswith("overhaul_")]
    assert all(name.startswith("overhaul_agent_") for name in ours)
    for name in ours:
        family = families[name]
        if family.type == "counter":
            assert not name.endswith("_total")  # the parser strips _total from counter family names
        assert not re.search(r"_(ms|milliseconds|kb|mb|minutes)(_|$)", name), name
    assert {"process_resident_memory_bytes", "process_cpu_seconds"} <= set(families)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("overhaul_agent_health_state", (("state", "Healthy"),))] == 1
    assert samples[("overhaul_agent_health_state", (("state", "Unknown"),))] == 0
    assert samples[("overhaul_agent_phase_ordering_number", ())] == 1
    assert samples[("overhaul_agent_probes_total", (("result", "Healthy"),))] >= 1
    assert families["overhaul_agent_probe_duration_seconds"].type == "histogram"


async def test_etag_of_another_agent_process_answers_at_once(fake_app: FakeApp, start_agent: StartAgent) -> None:
    agent = await start_agent(fast_settings(fake_app.port))
    await agent.wait_state("Healthy")
    _, _, etag = await agent.health()
    epoch, version = etag.strip('"').split(".")
    stale = f"{int(epoch, 16) ^ 1:08x}.{version}"  # same version number, another process (e.g. before a reimage)
    started = time.monotonic()
    _, _, answered = await agent.health(f"?wait=30&etag={stale}")
    assert time.monotonic() - started < 1
    assert answered == etag


async def test_the_tcp_health_port_survives_a_port_it_cannot_open_and_opens_when_it_can() -> None:
    """A verdict change must never fail because the TCP health port cannot listen (taken, no file descriptor)."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = int(blocker.getsockname()[1])
    tcp = TcpHealthPort("127.0.0.1", port)
    healthy = SimpleNamespace(state=HealthState.HEALTHY, closing=False)
    tcp.on_verdict(healthy)  # type: ignore[arg-type]
    assert not tcp.listening
    blocker.close()
    await asyncio.sleep(1.0)  # two retries' worth
    assert tcp.listening
    tcp.close()
    assert not tcp.listening


async def test_custom_metrics_are_the_latest_probes_only(fake_app: FakeApp, start_agent: StartAgent) -> None:
    """SkipUpgrade must not stick once the application stops sending it."""
    skip = json.dumps({"rollingUpgrade": {"SkipUpgrade": True}})
    fake_app.set_state("Healthy", custom_metrics=skip)
    agent = await start_agent(fast_settings(fake_app.port))
    await agent.wait_state("Healthy")
    _, doc, etag = await agent.health()
    assert doc["customMetrics"]["rollingUpgrade"]["SkipUpgrade"] is True
    fake_app.set_state("Healthy")  # no customMetrics any more
    async with asyncio.timeout(10):
        while doc["customMetrics"] is not None:
            _, doc, etag = await agent.health(f"?wait=5&etag={etag.strip(chr(34))}")  # the next change


async def test_pushed_platform_notices_need_the_platform_token(
    fake_app: FakeApp, start_agent: StartAgent, tmp_path: Path
) -> None:
    """A VM's config drive cannot change: the orchestrator pushes the notice with the instance's platformToken."""
    metadata = InstanceMetadata(instance_id="0", platform_token="s3cret")
    agent = await start_agent(fast_settings(fake_app.port), metadata=metadata)
    push = f"{agent.url}/platform/tags"
    tags_url = f"{agent.url}/metadata/instance/compute/tagsList"
    notice = {"tags": {"Platform.PendingOSUpgrade": "2.0.0"}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        async with agent.session.put(push, json=notice, headers=headers) as resp:
            assert resp.status == 401
    async with agent.session.get(tags_url) as resp:
        assert await resp.json() == []
    auth = {"Authorization": "Bearer s3cret"}
    async with agent.session.put(push, json={"tags": {"a": 1}}, headers=auth) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["target"] == "tags"
    async with agent.session.put(push, json=notice, headers=auth) as resp:
        assert resp.status == 200
    async with agent.session.get(tags_url) as resp:
        assert await resp.json() == [{"name": "Platform.PendingOSUpgrade", "value": "2.0.0"}]
    approve = f"{agent.url}/platform/approve-os-upgrade"
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        async with agent.session.post(approve, headers=headers) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer", headers
    async with agent.session.get(f"{agent.url}/health") as resp:
        assert (await resp.json())["approvedOSUpgrade"] is None  # nothing was approved by those
    async with agent.session.post(approve, headers=auth) as resp:
        assert resp.status == 200 and await resp.json() == {"approvedOSUpgrade": "2.0.0"}
    assert stat.S_IMODE((tmp_path / "run" / "platform.json").stat().st_mode) == 0o600
    async with agent.session.put(push, json={"tags": {}}, headers=auth) as resp:  # withdrawn
        assert resp.status == 200
    async with agent.session.get(tags_url) as resp:
        assert await resp.json() == []
    assert (tmp_path / "run" / "platform.json").exists()  # kept in the runtime directory, not on the OS disk


async def test_without_a_platform_token_nothing_can_be_pushed(fake_app: FakeApp, start_agent: StartAgent) -> None:
    agent = await start_agent(fast_settings(fake_app.port))
    async with agent.session.put(f"{agent.url}/platform/tags", json={"tags": {}}) as resp:
        assert resp.status == 404
    async with agent.session.post(f"{agent.url}/platform/approve-os-upgrade") as resp:
        assert resp.status == 403  # no token in the metadata: nobody may approve through the network


async def test_an_undecodable_platform_credential_is_401_not_a_crash(
    fake_app: FakeApp, start_agent: StartAgent
) -> None:
    agent = await start_agent(fast_settings(fake_app.port), metadata=InstanceMetadata(platform_token="s3cret"))
    host, port = agent.url.removeprefix("http://").split(":")
    for path in ("/platform/tags", "/platform/approve-os-upgrade"):
        method = "PUT" if path.endswith("tags") else "POST"
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n"
        raw = head.encode() + b"Authorization: Bearer \xff\xfe\r\n\r\n{}"
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    deep = b'{"tags": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    auth = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
    async with agent.session.put(f"{agent.url}/platform/tags", data=deep, headers=auth) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["target"] == "body"
