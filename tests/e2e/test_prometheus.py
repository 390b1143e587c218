"""A real Prometheus server scrapes a running orchestrator and the agents it discovers through it; the shipped alert
rules and dashboard are checked with promtool and against the metrics the programs really expose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from overhaul.adapters.http.metrics import OrchestratorMetrics
from overhaul.core.rollout import AttemptStatus, StartedBy
from overhaul.localhost import free_port
from tests.builders import Runtime, small, version
from tests.conftest import FakeApp, StartAgent, fast_settings
from tests.serve import API, Served, overhaul_serve

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib"
RG = "/subscriptions/local/resourceGroups/rg/providers/Microsoft.Compute"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with overhaul_serve(tmp_path / "state", "--engine", "memory") as running:
        yield running


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
    return body


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        result: list[dict[str, Any]] = json.load(resp)["data"]["result"]
    return result


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, scrape_configs: str) -> AsyncIterator[int]:
    """A real Prometheus with overhaul's alert rules loaded; yields its port."""
    shutil.copy(CONTRIB / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files:\n  - alerts.yml\n"
        f"scrape_configs:\n{scrape_configs}"
    )
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def until_up(port: int, expected: set[str], targets: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Waits until the jobs in ``expected`` have ``targets`` targets, all up; returns the up series."""
    up: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(OSError):
                    up = await asyncio.to_thread(query, port, "up")
                jobs = {r["metric"]["job"] for r in up}
                if jobs == expected and len(up) == targets and all(r["value"][1] == "1" for r in up):
                    return up
                await asyncio.sleep(0.5)  # Prometheus scrapes on its own schedule
    except TimeoutError:
        known = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/api/v1/targets")
        raise AssertionError(f"not all up: {up}; targets: {known.decode()[:2000]}") from None


async def test_prometheus_scrapes_orchestrator_and_agent(
    served: Served, fake_app: FakeApp, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent(fast_settings(fake_app.port))
    await agent.wait_state("Healthy")
    gallery = ("-g", "rg", "-r", "g", "-i", "img")
    for args in (
        ("group", "create", "-n", "rg", "-l", "local"),
        ("sig", "image-definition", "create", *gallery, "--publisher", "p", "--offer", "o", "--sku", "s"),
        ("sig", "image-version", "create", *gallery, "-e", "1.0.0", "--container-image", "x:1"),
        ("vmss", "create", "-n", "web", "-g", "rg", "--image", "p:o:s:latest", "--instance-count", "2"),
    ):
        await asyncio.to_thread(served.cli, *args)
    orchestrator_target = served.url.removeprefix("http://")
    scrape = (
        f"  - job_name: overhaul\n    static_configs:\n      - targets: ['{orchestrator_target}']\n"
        f"  - job_name: agent\n    static_configs:\n      - targets: ['127.0.0.1:{agent.agent.http_port}']\n"
    )
    async with prometheus(tmp_path, scrape) as port:
        await until_up(port, {"overhaul", "agent"}, 2)
        health = await asyncio.to_thread(query, port, 'overhaul_agent_health_state{state="Healthy"}')
        assert [r["value"][1] for r in health] == ["1"]
        capacity = await asyncio.to_thread(query, port, 'overhaul_scale_set_capacity{scale_set="web"}')
        assert [r["value"][1] for r in capacity] == ["2"]
        instances = await asyncio.to_thread(
            query, port, 'overhaul_instances{scale_set="web",version="1.0.0",health="Unmonitored"}'
        )
        assert [r["value"][1] for r in instances] == ["2"]
        for series in (
            "overhaul_health_watch_errors_total",
            "overhaul_engine_up",
            "overhaul_scale_set_max_unhealthy_instance_percent",
            "overhaul_agent_probes_total",
            "process_resident_memory_bytes",
        ):
            assert await asyncio.to_thread(query, port, series), series
        groups = json.loads(await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/api/v1/rules"))["data"]["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} >= {"OverhaulEngineDown", "OverhaulAgentsNotScraped"}


def agent_model(capacity: int, health_port: int) -> dict[str, Any]:
    settings = fast_settings(health_port)
    extension = {"name": "health", "properties": {"type": "ApplicationHealthLinux", "settings": settings}}
    profile = {
        "storageProfile": {"imageReference": {"publisher": "p", "offer": "o", "sku": "s", "version": "latest"}},
        "extensionProfile": {"extensions": [extension]},
    }
    return {
        "location": "local",
        "sku": {"capacity": capacity},
        "properties": {"upgradePolicy": {"mode": "Manual"}, "virtualMachineProfile": profile},
    }


async def test_prometheus_finds_and_scrapes_every_agent_through_the_orchestrator(
    served: Served, fake_app: FakeApp, start_agent: StartAgent, tmp_path: Path
) -> None:
    """`http_sd_configs` on GET /prometheus/targets: every instance's agent is scraped, labelled with its scale set,
    instance and version. (The memory engine runs no containers: each agent is started on the port the
    orchestrator gave its instance, where a container would publish it.)"""
    identifier = {"properties": {"identifier": {"publisher": "p", "offer": "o", "sku": "s"}}}
    assert served.call("PUT", f"{RG}/galleries/g/images/img?{API}", identifier)[0] == 201
    source = {"storageProfile": {"source": {"overhaul": {"containerImage": "x:1"}}}}
    assert served.call("PUT", f"{RG}/galleries/g/images/img/versions/1.0.0?{API}", {"properties": source})[0] == 201
    assert served.call("PUT", f"{RG}/virtualMachineScaleSets/web?{API}", agent_model(3, fake_app.port))[0] == 201
    status, targets, _ = served.call("GET", "/prometheus/targets")
    assert status == 200 and len(targets) == 3, targets
    assert [g["labels"]["instance"] for g in targets] == ["web_0", "web_1", "web_2"]
    assert {(g["labels"]["scale_set"], g["labels"]["version"]) for g in targets} == {("web", "1.0.0")}
    for i, group in enumerate(targets):
        host, _, agent_port = group["targets"][0].rpartition(":")
        assert host == "127.0.0.1"
        await start_agent(fast_settings(fake_app.port), port=int(agent_port), state_dir=tmp_path / f"agent{i}")
    with pytest.raises(urllib.error.HTTPError, match="401"):
        await asyncio.to_thread(fetch, f"{served.url}/prometheus/targets")  # the token is needed, as for the API
    scrape = (
        "  - job_name: overhaul-agents\n"
        "    http_sd_configs:\n"
        f"      - url: {served.url}/prometheus/targets\n"
        "        refresh_interval: 1s\n"
        "        authorization:\n          type: Bearer\n"
        f"          credentials_file: {served.state_dir / 'token'}\n"
    )
    async with prometheus(tmp_path, scrape) as port:
        up = await until_up(port, {"overhaul-agents"}, 3)
        assert sorted(r["metric"]["instance"] for r in up) == ["web_0", "web_1", "web_2"]
        healthy = await asyncio.to_thread(
            query, port, 'overhaul_agent_health_state{job="overhaul-agents",state="Healthy",version="1.0.0"}'
        )
        assert len(healthy) == 3


async def test_the_rolling_upgrade_counters_agree_with_history(tmp_path: Path) -> None:
    """Completed, Faulted on the way, Faulted before it began (too many unhealthy), Cancelled: each ended attempt
    is counted once under its final status, as history records it."""
    runtime = Runtime(tmp_path / "overhaul.db")
    orchestrator = runtime.orchestrator
    metrics = OrchestratorMetrics(orchestrator)
    await orchestrator.start()
    try:
        from overhaul.core.gallery import ImageDefinition  # noqa: PLC0415

        await orchestrator.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
        await orchestrator.galleries.publish(version("1.0.0"))
        await orchestrator.scale_sets.put("web", small(5))
        for number, exits in (("2.0.0", False), ("3.0.0", True), ("4.0.0", False)):
            await orchestrator.galleries.publish(version(number))
            if exits:
                runtime.driver.exiting_images.add(f"localhost/tiny:{number}")
            attempt = await orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)
            if number == "4.0.0":
                await orchestrator.upgrades.cancel("web")
            await orchestrator.upgrades.wait(attempt.id, 10)
        for instance_id in (1, 2):  # two of five stopped: the next attempt Faults before it begins
            state = runtime.driver.instances["web"][instance_id]
            assert state.current is not None
            runtime.driver.instances["web"][instance_id] = type(state)(
                instance_id, type(state.current)(state.current.version, state.current.image, False), state.previous
            )
        refused = await orchestrator.upgrades.start("web", started_by=StartedBy.USER)
        assert refused.status is AttemptStatus.FAULTED
        history = await orchestrator.upgrades.history("web")
        text = (await metrics.render()).decode()
    finally:
        await orchestrator.close()
        await runtime.store.close()
    counted = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'overhaul_rolling_upgrades_total\{scale_set="web",status="(\w+)"\} (\S+)', text)
    }
    recorded: dict[str, float] = {}
    for item in history:
        recorded[item.attempt.status.value] = recorded.get(item.attempt.status.value, 0) + 1
    assert counted == recorded, (counted, recorded)
    assert recorded.get("Faulted") == 2


def test_the_alert_rules_pass_promtool() -> None:
    rules = CONTRIB / "prometheus"
    for args in (
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
        ("check", "config", "--syntax-only", "prometheus.yml"),
    ):
        result = subprocess.run(["promtool", *args], cwd=rules, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses PromQL in rule files: each panel's query becomes a recording rule ($variables filled in)."""
    filled = [e.replace("$__rate_interval", "5m").replace("$scale_set", ".*") for e in dashboard_queries()]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"q{i}", "expr": e} for i, e in enumerate(filled)]}]}
    (tmp_path / "dashboard_rules.yml").write_text(json.dumps(rules))
    result = subprocess.run(
        ["promtool", "check", "rules", str(tmp_path / "dashboard_rules.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_queries() -> list[str]:
    dashboard = json.loads((CONTRIB / "grafana" / "overhaul.json").read_text())
    exprs = [str(t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 6
    return exprs


async def test_the_dashboard_reads_only_series_the_programs_expose(
    served: Served, fake_app: FakeApp, start_agent: StartAgent
) -> None:
    agent = await start_agent(fast_settings(fake_app.port))
    exposed = (await asyncio.to_thread(fetch, f"http://127.0.0.1:{agent.agent.http_port}/metrics")).decode()
    exposed += (await asyncio.to_thread(fetch, f"{served.url}/metrics")).decode()
    names = set(re.findall(r"^# TYPE (\w+) (\w+)", exposed, re.MULTILINE))
    known = {n for n, _ in names} | {f"{n}_total" for n, t in names if t == "counter"}
    known |= {f"{n}_bucket" for n, t in names if t == "histogram"}
    used = {name for e in dashboard_queries() for name in re.findall(r"\boverhaul_\w+", e)}
    assert used <= known, used - known
