"""A real Prometheus server scrapes a running orchestrator and a running agent."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FakeApp, StartAgent, fast_settings, free_port
from tests.serve import Served, overhaul_serve


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with overhaul_serve(tmp_path / "state", "--engine", "memory") as running:
        yield running


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        result: list[dict[str, Any]] = json.load(resp)["data"]["result"]
    return result


async def test_prometheus_scrapes_orchestrator_and_agent(
    served: Served, fake_app: FakeApp, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent(fast_settings(fake_app.port))
    await agent.wait_state("Healthy")
    gallery = ("-g", "rg", "-r", "g", "-i", "img")
    for args in (
        ("sig", "image-definition", "create", *gallery, "--publisher", "p", "--offer", "o", "--sku", "s"),
        ("sig", "image-version", "create", *gallery, "-e", "1.0.0", "--container-image", "x:1"),
        ("vmss", "create", "-n", "web", "-g", "rg", "--image", "p:o:s:latest", "--instance-count", "2"),
    ):
        await asyncio.to_thread(served.cli, *args)
    orchestrator_target = served.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: orchestrator\n    static_configs:\n      - targets: ['{orchestrator_target}']\n"
        f"  - job_name: agent\n    static_configs:\n      - targets: ['127.0.0.1:{agent.agent.http_port}']\n"
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
        async with asyncio.timeout(60):
            while True:
                try:
                    up = await asyncio.to_thread(query, port, "up")
                except OSError:
                    up = []
                if {r["metric"]["job"] for r in up if r["value"][1] == "1"} == {"orchestrator", "agent"}:
                    break
                await asyncio.sleep(0.5)  # Prometheus scrapes on its own schedule
        health = await asyncio.to_thread(query, port, 'overhaul_agent_health_state{state="Healthy"}')
        assert [r["value"][1] for r in health] == ["1"]
        capacity = await asyncio.to_thread(query, port, 'overhaul_scale_set_capacity{scale_set="web"}')
        assert [r["value"][1] for r in capacity] == ["2"]
        instances = await asyncio.to_thread(query, port, 'overhaul_instances{scale_set="web",health="Unmonitored"}')
        assert [r["value"][1] for r in instances] == ["2"]
        for series in (
            "overhaul_health_watch_errors_total",
            "overhaul_agent_probes_total",
            "process_resident_memory_bytes",
        ):
            assert await asyncio.to_thread(query, port, series), series
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
