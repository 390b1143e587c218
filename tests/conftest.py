"""Shared fixtures: real local application servers and an in-process agent, plus a task-leak check."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from overhaul.localhost import free_port
from overhaul_agent.agent import Agent
from overhaul_agent.config import AgentConfig
from overhaul_agent.metadata import InstanceMetadata
from overhaul_agent.settings import parse_settings
from tests.postgres import Postgres, available


@pytest.fixture(autouse=True)
async def no_leftover_tasks() -> AsyncIterator[None]:
    """Fails a test that leaves background tasks running: every task must be supervised and cancelled."""
    yield
    current = asyncio.current_task()
    for _ in range(20):  # let tasks that are already finishing get there
        leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not leftover:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"tasks left running: {[t.get_name() for t in leftover]}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster per test process (each test takes a database of its own from it)."""
    missing = available()
    if missing is not None:
        pytest.fail(missing)  # not a skip: the machine set-up installs it
    cluster = Postgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@dataclass
class FakeApp:
    """A real HTTP application on 127.0.0.1 whose health answer the test controls."""

    port: int
    status: int = 200
    body: bytes = b'{"applicationHealthState": "Healthy"}'
    hang: bool = False
    requests: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def set_state(self, state: str, custom_metrics: Any = None) -> None:
        doc: dict[str, Any] = {"applicationHealthState": state}
        if custom_metrics is not None:
            doc["customMetrics"] = custom_metrics
        self.body = json.dumps(doc).encode()
        self.status = 200


@pytest.fixture
async def fake_app() -> AsyncIterator[FakeApp]:
    app_state = FakeApp(port=free_port())

    async def handler(request: web.Request) -> web.StreamResponse:
        app_state.requests += 1
        if app_state.hang:
            await app_state.released.wait()
        return web.Response(status=app_state.status, body=app_state.body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/health", handler)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", app_state.port).start()
    yield app_state
    app_state.released.set()
    await runner.cleanup()


def agent_argv(port: int, state_dir: Path, *args: str, tcp_port: int = 0) -> list[str]:
    """The agent as a process serving on 127.0.0.1:``port``; ``args``: its configuration (--settings FILE, ...)."""
    return [
        sys.executable, "-m", "overhaul_agent", *args, "--host", "127.0.0.1", "--port", str(port),
        "--tcp-port", str(tcp_port), "--state-dir", str(state_dir),
    ]  # fmt: skip


def fast_settings(port: int, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "protocol": "http",
        "port": port,
        "requestPath": "/health",
        "intervalInSeconds": 0.1,
        "numberOfProbes": 1,
        "gracePeriod": 5,
        "overhaul": {"fastProbes": True},
    }
    doc.update(overrides)
    return doc


@dataclass
class RunningAgent:
    agent: Agent
    task: asyncio.Task[int]
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.agent.http_port}"

    async def health(self, query: str = "") -> tuple[int, dict[str, Any], str]:
        async with self.session.get(f"{self.url}/health{query}") as resp:
            return resp.status, await resp.json(), resp.headers["ETag"]

    async def wait_state(self, state: str, timeout: float = 10.0) -> dict[str, Any]:
        """Follows the agent with blocking queries until it reports ``state``."""
        etag = '"0.0"'
        async with asyncio.timeout(timeout):
            while True:
                _, doc, etag = await self.health(f"?wait=5&etag={etag.strip(chr(34))}")
                if doc["applicationHealthState"] == state:
                    return doc


StartAgent = Callable[..., Awaitable[RunningAgent]]


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[StartAgent]:
    started: list[RunningAgent] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def start(
        settings: dict[str, Any] | None,
        metadata: InstanceMetadata | None = None,
        tcp_port: int | None = None,
        state_dir: Path | None = None,
        port: int = 0,
        *,
        metadata_path: str | None = None,
    ) -> RunningAgent:
        metadata = metadata or InstanceMetadata()
        if settings is None and metadata.health_settings is not None:
            settings = dict(metadata.health_settings)  # as load_config does for --metadata
        config = AgentConfig(
            settings=parse_settings(settings) if settings is not None else None,
            metadata=metadata,
            host="127.0.0.1",
            port=port,
            tcp_port=tcp_port,
            state_dir=state_dir or tmp_path / "state",
            metadata_path=metadata_path,
            runtime_dir=tmp_path / "run",
        )
        agent = Agent(config)
        task = asyncio.create_task(agent.run(), name="agent-under-test")
        await asyncio.wait_for(agent.ready.wait(), 5)
        running = RunningAgent(agent, task, session)
        started.append(running)
        return running

    yield start
    for running in started:
        running.agent.stop.set()
        assert await asyncio.wait_for(running.task, 5) == 0
    await session.close()


# Tests that drive a real engine share its namespaces (container, network and volume names such as `web_0`), so
# under pytest-xdist every Podman or Docker test runs on one worker, in order. QEMU tests (VMs under directories of
# their own) run beside them: the VM module on one worker, the VM image module on another, and the QEMU variant of
# the driver contract with the VM module (they share the VM artefacts, built once).
# Modules with engines of their own, beside the container-engine lane: QEMU's, the replicas' Podman service (its
# containers' names are its own), and the multi-host modules' Podman services, one store each (they share their
# loopback addresses and host-port ranges with each other, so they take turns in one lane).
ENGINE_GROUPS = {
    "test_qemu_vms": "qemu",
    "test_vm_image": "vm-image",
    "test_replicas_podman": "replicas",
    "test_hosts_podman": "hosts",
    "test_hosts_three": "hosts",
    "test_host_router": "hosts",
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist writes the groups into node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("engine") is None:
            continue
        params = getattr(item, "callspec", None)
        if params is not None and params.params.get("kit") == "qemu":
            group = "qemu"
        else:
            group = ENGINE_GROUPS.get(item.path.stem, "container-engine")
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under --dist loadgroup every grouped test must carry its group in its node id (pytest-xdist groups by it):
    a pytest or xdist that stops doing so would spread the real-engine modules over workers, and they would
    collide on the engine's names."""
    if not getattr(session.config.option, "loadgroup", False):  # set by pytest-xdist under --dist loadgroup
        return
    ungrouped = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if ungrouped:
        raise pytest.UsageError(f"pytest-xdist did not group {ungrouped[:3]}: see the pytest pin in pyproject.toml")
