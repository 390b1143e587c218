"""The orchestrator's health sources against real servers: a real agent (blocking queries) and a real app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from overhaul.adapters.health.monitor import HealthMonitor, HealthSettings, parse_agent_health
from overhaul.core.model import HealthProbe
from overhaul.core.planner import Health
from overhaul.localhost import free_port
from overhaul.ports.health import HealthReport
from overhaul_agent.metadata import InstanceMetadata
from tests.conftest import FakeApp, StartAgent, fast_settings


@pytest.fixture
async def monitor() -> AsyncIterator[HealthMonitor]:
    watcher = HealthMonitor(HealthSettings(watch_wait=5, probe_interval=0.1, probe_timeout=1, probe_grace_period=0.3))
    yield watcher
    await watcher.close()


async def until(monitor: HealthMonitor, key: tuple[str, int], health: Health, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while True:
            seen = monitor.version
            report = monitor.report(key)
            if report is not None and report.health is health:
                return
            await monitor.wait_changed(seen, timeout)


async def test_agent_watch_follows_a_real_agent(
    fake_app: FakeApp, start_agent: StartAgent, monitor: HealthMonitor
) -> None:
    fake_app.set_state("Healthy", custom_metrics=json.dumps({"rollingUpgrade": {"PhaseOrderingNumber": 2}}))
    agent = await start_agent(fast_settings(fake_app.port))
    assert agent.agent.http_port is not None
    key = ("web", 0)
    monitor.watch_agent(key, "127.0.0.1", agent.agent.http_port)
    await until(monitor, key, Health.HEALTHY)
    report = monitor.report(key)
    assert report is not None and report.phase == 2 and not report.skip_upgrade
    requests_before = fake_app.requests
    fake_app.set_state("Unhealthy")
    await until(monitor, key, Health.UNHEALTHY)
    assert fake_app.requests > requests_before
    report = monitor.report(key)
    assert report is not None and report.final and report.reachable  # the agent's committed verdict
    agent.agent.stop.set()
    await agent.task
    await until(monitor, key, Health.UNKNOWN)  # an agent that cannot be reached is Unknown
    assert monitor.watch_errors >= 1
    report = monitor.report(key)
    assert report is not None
    # ... but not a verdict: the instance may still be booting, only the engine can tell it exited.
    assert not report.final and not report.reachable
    # Said in a few words, as `--wait` shows it; a stopped agent may also have closed the open connection.
    assert report.detail.startswith("agent ") and f"127.0.0.1:{agent.agent.http_port}" in report.detail, report.detail


async def test_load_balancer_probe_http_and_tcp(fake_app: FakeApp, monitor: HealthMonitor) -> None:
    monitor.watch_probe(("web", 1), HealthProbe("Http", 8080, "/health"), "127.0.0.1", fake_app.port)
    await until(monitor, ("web", 1), Health.HEALTHY)
    fake_app.status = 500
    await until(monitor, ("web", 1), Health.UNHEALTHY)
    monitor.watch_probe(("web", 2), HealthProbe("Tcp", 8080), "127.0.0.1", fake_app.port)
    await until(monitor, ("web", 2), Health.HEALTHY)
    monitor.watch_probe(("web", 3), HealthProbe("Tcp", 8080), "127.0.0.1", free_port())
    # Failures within the probe's grace period after a (re)start are Initializing, then the verdict.
    await until(monitor, ("web", 3), Health.INITIALIZING)
    report = monitor.report(("web", 3))
    assert report is not None and "grace period" in report.detail and not report.final
    await until(monitor, ("web", 3), Health.UNHEALTHY)
    report = monitor.report(("web", 3))
    assert report is not None and report.final


async def test_wait_changed_does_not_miss_a_change_before_the_wait(monitor: HealthMonitor) -> None:
    seen = monitor.version
    monitor.watch_probe(("web", 4), HealthProbe("Tcp", 8080), "127.0.0.1", free_port())
    await until(monitor, ("web", 4), Health.UNHEALTHY)
    # The change happened before this wait started: it must return at once, not after the timeout.
    await asyncio.wait_for(monitor.wait_changed(seen, 30), 1)


async def test_reset_forgets_the_previous_os_disk(fake_app: FakeApp, monitor: HealthMonitor) -> None:
    key = ("web", 5)
    monitor.watch_probe(key, HealthProbe("Http", 8080, "/health"), "127.0.0.1", fake_app.port)
    await until(monitor, key, Health.HEALTHY)
    monitor.reset(key)
    report = monitor.report(key)
    assert report is not None and report.health is Health.UNKNOWN
    await until(monitor, key, Health.HEALTHY)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"applicationHealthState": "Healthy"}, (Health.HEALTHY, None, False)),
        ({"applicationHealthState": "Initializing"}, (Health.INITIALIZING, None, False)),
        ({"applicationHealthState": "Bogus"}, (Health.UNKNOWN, None, False)),
        ([], (Health.UNKNOWN, None, False)),
        (
            {
                "applicationHealthState": "Healthy",
                "customMetrics": {"rollingUpgrade": {"PhaseOrderingNumber": 1, "SkipUpgrade": True}},
            },
            (Health.HEALTHY, 1, True),
        ),
        (
            {"applicationHealthState": "Healthy", "customMetrics": {"rollingUpgrade": {"PhaseOrderingNumber": True}}},
            (Health.HEALTHY, None, False),
        ),
    ],
)
def test_parse_agent_health(doc: object, expected: tuple[Health, int | None, bool]) -> None:
    assert parse_agent_health(doc)[:3] == expected


async def test_an_expected_outage_is_not_a_watch_error(
    fake_app: FakeApp, start_agent: StartAgent, monitor: HealthMonitor
) -> None:
    """A reimage takes the agent down on purpose: the failed requests until it answers again are not errors."""
    fake_app.set_state("Healthy")
    agent = await start_agent(fast_settings(fake_app.port))
    assert agent.agent.http_port is not None
    key = ("web", 9)
    monitor.watch_agent(key, "127.0.0.1", agent.agent.http_port)
    await until(monitor, key, Health.HEALTHY)
    monitor.expect_outage(key)  # as the reconciler does before a reimage or rollback
    agent.agent.stop.set()
    await agent.task
    await until(monitor, key, Health.UNKNOWN)
    await asyncio.sleep(0.3)  # several retries fail meanwhile
    assert monitor.watch_errors == 0


async def test_a_pending_os_upgrade_is_shown_to_the_application_and_its_approval_reaches_the_orchestrator(
    fake_app: FakeApp, start_agent: StartAgent, monitor: HealthMonitor, tmp_path: Path
) -> None:
    """osRollingUpgradeDeferral through a real agent: the notice on the config drive appears as Azure IMDS's
    Platform.PendingOSUpgrade tag; the application approves through the agent; the watch carries the approval."""
    metadata = tmp_path / "drive" / "metadata.json"
    metadata.parent.mkdir()
    agent = await start_agent(
        fast_settings(fake_app.port), InstanceMetadata(platform_token="s3cret"), metadata_path=str(metadata)
    )
    auth = {"Authorization": "Bearer s3cret"}  # the application reads it from its metadata
    assert agent.agent.http_port is not None
    key = ("web", 0)
    monitor.watch_agent(key, "127.0.0.1", agent.agent.http_port)
    await until(monitor, key, Health.HEALTHY)
    tags_url = f"{agent.url}/metadata/instance/compute/tagsList"
    approve_url = f"{agent.url}/platform/approve-os-upgrade"
    async with agent.session.get(tags_url) as resp:
        assert await resp.json() == []
    async with agent.session.post(approve_url, headers=auth) as resp:
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "NoPendingOSUpgrade"
    # What the engine driver writes into a running instance's config drive.
    (metadata.parent / "platform.json").write_text(json.dumps({"tags": {"Platform.PendingOSUpgrade": "2.0.0"}}))
    async with agent.session.get(tags_url) as resp:
        assert await resp.json() == [{"name": "Platform.PendingOSUpgrade", "value": "2.0.0"}]
    report = monitor.report(key)
    assert report is not None and report.approved is None
    seen = monitor.version
    async with agent.session.post(approve_url) as resp:
        assert resp.status == 401  # a neighbour that only reaches the port
    async with agent.session.post(approve_url, headers=auth) as resp:
        assert resp.status == 200 and await resp.json() == {"approvedOSUpgrade": "2.0.0"}
    async with asyncio.timeout(10):
        while (report := monitor.report(key)) is None or report.approved != "2.0.0":
            await monitor.wait_changed(seen, 5)
            seen = monitor.version


async def test_a_probes_number_of_probes_failures_in_a_row_make_a_healthy_instance_unhealthy(
    fake_app: FakeApp, monitor: HealthMonitor
) -> None:
    """Azure's load balancer probe semantics for numberOfProbes: one failed probe of three is not a verdict."""
    key = ("web", 1)
    monitor.watch_probe(key, HealthProbe("Http", 8080, "/health", number_of_probes=3), "127.0.0.1", fake_app.port)
    await until(monitor, key, Health.HEALTHY)
    fake_app.status = 500
    failed_at = fake_app.requests
    await until(monitor, key, Health.UNHEALTHY)
    assert fake_app.requests - failed_at >= 3  # it took three failed probes, not one
    fake_app.status = 200
    await until(monitor, key, Health.HEALTHY)


async def test_an_agent_that_cannot_be_reached_after_a_reimage_wakes_whoever_waits(monitor: HealthMonitor) -> None:
    """Unknown stays Unknown, but "cannot be reached" is news: the reconciler then asks the engine whether the
    instance exited, instead of waiting for its next routine listing."""
    key = ("web", 11)
    monitor.watch_agent(key, "127.0.0.1", free_port())  # nothing listens: as an instance that exited
    monitor.reset(key)
    seen = monitor.version
    async with asyncio.timeout(10):
        while (report := monitor.report(key)) is None or report.reachable:
            await monitor.wait_changed(seen, 10)
            seen = monitor.version
    assert report.health is Health.UNKNOWN and "not answering" in report.detail


async def test_an_agent_answering_for_another_instance_is_unknown_and_a_watch_error_naming_both(
    fake_app: FakeApp, start_agent: StartAgent, monitor: HealthMonitor
) -> None:
    """Where hosts reuse port numbers, an address can reach another instance's agent: its word is not this one's."""
    fake_app.set_state("Healthy")
    agent = await start_agent(fast_settings(fake_app.port), InstanceMetadata(instance_id="3", scale_set="Other"))
    assert agent.agent.http_port is not None
    wrong, right = ("web", 0), ("other", 3)
    monitor.watch_agent(wrong, "127.0.0.1", agent.agent.http_port)
    monitor.watch_agent(right, "127.0.0.1", agent.agent.http_port)
    await until(monitor, right, Health.HEALTHY)  # its own: names compare case-blind

    async def told() -> HealthReport | None:
        while (report := monitor.report(wrong)) is None or "answers for" not in report.detail:
            await monitor.wait_changed(monitor.version, 1)
        return report

    report = await asyncio.wait_for(told(), 10)
    assert report is not None and report.health is Health.UNKNOWN and not report.final
    assert "Other_3" in report.detail and "web_0" in report.detail and monitor.watch_errors >= 1


async def test_blocking_queries_ask_for_a_jittered_wait_so_thousands_of_watches_do_not_come_back_at_once() -> None:
    waits: list[float] = []
    enough = asyncio.Event()

    async def health(request: web.Request) -> web.Response:
        if "wait" in request.query:
            waits.append(float(request.query["wait"]))
        if len(waits) >= 20:
            enough.set()
        return web.json_response({"applicationHealthState": "Healthy"}, headers={"ETag": '"1"'})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    watcher = HealthMonitor(HealthSettings(watch_wait=30))
    try:
        watcher.watch_agent(("web", 0), "127.0.0.1", port)
        async with asyncio.timeout(10):
            await enough.wait()
    finally:
        await watcher.close()
        await runner.cleanup()
    assert all(30 * 7 / 8 <= w <= 30 for w in waits), waits
    assert len(set(waits)) > 1, waits
