"""10,000 watched instances over 100 hosts, measured in one run.

The orchestrator (this process: the runtime, real SQLite, HostRouter over 100 simulated hosts' memory engines in
5 zones, the health monitor and the HTTP API with /metrics) watches 10,000 simulated agents, each answering the
agent's blocking queries (`GET /health?wait=…&etag=…`) on its own port at its host's publish address. The agents run
in 4 processes of their own (this machine allows 20,000 open files a process, and each agent holds a listening
socket and a connection), so what is measured here is the orchestrator's alone:

1. idle CPU over the idle window (5 minutes; `--idle SECONDS`), with a `/metrics` scrape every 15 s: percent of a
   core per 1,000 watched instances (target <= 1 %);
2. memory per watched instance: the resident set's growth from before the scale set to all 10,000 Healthy,
   over 10,000 (target <= 64 KiB);
3. a verdict change seen: an agent's answer flips (Healthy <-> Unhealthy) and the orchestrator's report follows;
   200 flips one after another, from the flip request's send to the report (target p99 <= 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.fleet_model import health_extension  # noqa: E402
from overhaul.adapters.drivers.hosts import HostRouter, placed_hosts  # noqa: E402
from overhaul.adapters.drivers.memory import MemoryDriver  # noqa: E402
from overhaul.adapters.health.monitor import HealthMonitor  # noqa: E402
from overhaul.adapters.http.app import build_app  # noqa: E402
from overhaul.adapters.http.metrics import OrchestratorMetrics  # noqa: E402
from overhaul.adapters.store.sqlite import SqliteStore  # noqa: E402
from overhaul.core.gallery import ImageDefinition, ImageVersion  # noqa: E402
from overhaul.core.hosts import Host, parse_host, parse_host_group  # noqa: E402
from overhaul.core.planner import Health  # noqa: E402
from overhaul.localhost import free_port  # noqa: E402
from overhaul.ports.driver import Driver  # noqa: E402
from overhaul.runtime.orchestrator import Orchestrator  # noqa: E402

CAPACITY, HOSTS, ZONES, AGENT_PROCESSES = 10_000, 100, 5, 4
FLIPS, SCRAPE_EVERY = 200, 15.0
NAME = "watched"


def raise_open_files() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the simulated agents (a process of their own) -----------------------------------------------------------


class Agent:
    """One instance's agent: its verdict, a version (the ETag) and an event set when it changes."""

    def __init__(self, instance_id: int) -> None:
        self.instance_id = instance_id
        self.health = "Healthy"
        self.version = 1
        self.changed = asyncio.Event()

    def doc(self) -> dict[str, Any]:
        return {"applicationHealthState": self.health, "scaleSet": NAME, "instanceId": str(self.instance_id)}

    def flip(self, health: str) -> None:
        self.health, self.version = health, self.version + 1
        self.changed.set()
        self.changed = asyncio.Event()


async def run_agents(listen: list[list[Any]], control_port: int, metrics_port: int) -> None:
    """Serves the agents at their (address, port) until stdin closes; flips one on `POST /flip?id=&health=`."""
    raise_open_files()
    agents: dict[tuple[str, int], Agent] = {}
    by_id: dict[int, Agent] = {}
    for address, port, instance_id in listen:
        agents[(address, port)] = by_id[instance_id] = Agent(instance_id)

    async def health(request: web.BaseRequest) -> web.StreamResponse:
        agent = agents[request.transport.get_extra_info("sockname")[:2]]  # type: ignore[union-attr]
        wait = float(request.query.get("wait", "0"))
        if request.query.get("etag") == str(agent.version) and wait > 0:
            try:
                async with asyncio.timeout(wait):
                    await agent.changed.wait()
            except TimeoutError:
                pass
        return web.json_response(agent.doc(), headers={"ETag": f'"{agent.version}"'})

    async def flip(request: web.Request) -> web.Response:
        by_id[int(request.query["id"])].flip(request.query["health"])
        return web.Response(text="ok")

    loop = asyncio.get_running_loop()
    server = web.Server(health, access_log=None)
    servers = [await loop.create_server(server, address, port, backlog=16) for address, port in agents]
    control = web.Application()
    control.router.add_post("/flip", flip)
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()
    scraping = asyncio.create_task(scrape(metrics_port)) if metrics_port else None
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    if scraping is not None:
        scraping.cancel()
    for s in servers:
        s.close()
    await runner.cleanup()


async def scrape(port: int) -> None:
    """Prometheus' part: GET /metrics every 15 s."""
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=30)) as r:
                await r.read()
            await asyncio.sleep(SCRAPE_EVERY)  # a scrape interval: nothing to wait on but time


# --- the orchestrator (this process) -------------------------------------------------------------------------


def model() -> dict[str, Any]:
    profile = {
        "storageProfile": {"imageReference": {"publisher": "o", "offer": "b", "sku": "t", "version": "latest"}},
        "extensionProfile": {"extensions": [health_extension({"protocol": "http", "port": 8080})]},
    }
    return {
        "zones": [str(z) for z in range(1, ZONES + 1)],
        "sku": {"capacity": CAPACITY},
        "properties": {"upgradePolicy": {"mode": "Manual"}, "virtualMachineProfile": profile},
    }


async def fleet(orchestrator: Orchestrator) -> None:
    await orchestrator.galleries.put_definition(ImageDefinition("g", "t", "o", "b", "t"))
    await orchestrator.galleries.publish(ImageVersion("g", "t", "1.0.0", "fake:1", published_at=1.0))
    for z in range(1, ZONES + 1):
        body: dict[str, Any] = {"zones": [str(z)], "properties": {"platformFaultDomainCount": 1}}
        await orchestrator.host_groups.put(parse_host_group(body, name=f"z{z}", resource_group="rg", subscription="s"))
    for h in range(HOSTS):
        # Below the ephemeral range: the orchestrator's own connections never hold one of them.
        ours = {
            "engine": f"unix:///run/h{h}.sock",
            "publishAddress": f"127.1.{h // 250}.{h % 250 + 1}",
            "hostPorts": "20000-20199",
        }
        host = parse_host({"properties": {"overhaul": ours}}, group=f"z{h % ZONES + 1}", name=f"h{h}",
                          resource_group="rg", subscription="s")  # fmt: skip
        await orchestrator.host_groups.put_host(host)


async def agent_addresses(orchestrator: Orchestrator) -> list[tuple[str, int, int]]:
    store = orchestrator.store
    hosts = {h.id.lower(): h for h in await store.hosts()}
    placed, ports = await store.instance_hosts(NAME), await store.instance_ports(NAME)
    return [(hosts[placed[i].lower()].publish_address, ports[i][8090], i) for i in range(CAPACITY)]


async def all_healthy(orchestrator: Orchestrator, timeout: float) -> None:
    health = orchestrator.health
    async with asyncio.timeout(timeout):
        while True:
            seen = health.version
            reports = [health.report((NAME, i)) for i in range(CAPACITY)]
            if all(r is not None and r.health is Health.HEALTHY for r in reports):
                return
            await health.wait_changed(seen, 5.0)


def start_agents(
    work: Path, listen: list[tuple[str, int, int]], metrics_port: int
) -> list[tuple[subprocess.Popen[str], int]]:
    started = []
    for k in range(AGENT_PROCESSES):
        control = free_port()
        mine = work / f"agents-{k}.json"
        mine.write_text(json.dumps(listen[k::AGENT_PROCESSES]))
        process = subprocess.Popen(
            [sys.executable, __file__, "--agents", str(mine), str(control), str(metrics_port if k == 0 else 0)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append((process, control))
    for process, _ in started:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return started


async def flips(orchestrator: Orchestrator, agents: list[tuple[subprocess.Popen[str], int]]) -> list[float]:
    """Seconds from each flip's send to the orchestrator's report of it."""
    health, seen_after = orchestrator.health, []
    rng = random.Random(7)
    async with aiohttp.ClientSession() as session:
        for n in range(FLIPS):
            instance_id = rng.randrange(CAPACITY)
            key = (NAME, instance_id)
            current = health.report(key)
            assert current is not None
            wanted = Health.UNHEALTHY if current.health is Health.HEALTHY else Health.HEALTHY
            control = agents[instance_id % AGENT_PROCESSES][1]
            started = time.perf_counter()
            url = f"http://127.0.0.1:{control}/flip?id={instance_id}&health={wanted.value}"
            async with session.post(url) as resp:
                assert resp.status == 200
            async with asyncio.timeout(10):
                while (report := health.report(key)) is None or report.health is not wanted:
                    await health.wait_changed(health.version, 1.0)
            seen_after.append(time.perf_counter() - started)
            if n % 2:
                await asyncio.sleep(0.05)  # flips apart, as verdicts come
    return seen_after


async def idle_window(me: psutil.Process, idle: float, profile: bool) -> float:
    """Percent of a core this process used over ``idle`` seconds (``profile``: and where, to stderr)."""
    cpu = me.cpu_times()
    wall = time.monotonic()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(idle)
    cpu_after = me.cpu_times()
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    used = (cpu_after.user - cpu.user) + (cpu_after.system - cpu.system)
    return used / (time.monotonic() - wall) * 100


async def main(idle: float, profile: bool = False) -> int:
    raise_open_files()
    work = Path(tempfile.mkdtemp(prefix="overhaul-watch-bench-"))
    store = SqliteStore(work / "overhaul.db")

    async def simulated(host: Host) -> Driver:
        return MemoryDriver(address=host.publish_address)

    router = HostRouter(MemoryDriver(), simulated, placed_hosts(store))
    orchestrator = Orchestrator(store, router, HealthMonitor())
    await orchestrator.start()
    app = build_app(orchestrator, "bench-token", OrchestratorMetrics(orchestrator))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    metrics_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", metrics_port).start()
    await fleet(orchestrator)
    me = psutil.Process()
    rss_before = me.memory_info().rss
    began = time.monotonic()
    await orchestrator.scale_sets.put(NAME, model())
    print(f"scale set of {CAPACITY:,} made in {time.monotonic() - began:.0f} s", file=sys.stderr)
    agents = start_agents(work, await agent_addresses(orchestrator), metrics_port)
    print(f"agents listening after {time.monotonic() - began:.0f} s", file=sys.stderr)
    try:
        await all_healthy(orchestrator, 600)
        print(f"all Healthy after {time.monotonic() - began:.0f} s", file=sys.stderr)
        await asyncio.sleep(5)  # the first answers' bursts over
        rss_after = me.memory_info().rss
        share = await idle_window(me, idle, profile)
        seen = await flips(orchestrator, agents)
    finally:
        for process, _ in agents:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(30)
        await runner.cleanup()
        await orchestrator.close()
        await router.close()
        await store.close()
    per_thousand = share / (CAPACITY / 1000)
    seen.sort()
    p99 = seen[int(len(seen) * 0.99) - 1]
    print(f"\n{CAPACITY:,} watched instances (simulated agents' blocking queries) over {HOSTS} hosts in {ZONES} zones")
    print(f"{'measure':<60}{'value':>10}  target")
    idle_row = f"idle CPU, % of a core per 1,000 watched ({idle:.0f} s, /metrics every 15 s)"
    print(f"{idle_row:<60}{per_thousand:>10.3f}  <= 1")
    print(f"{'memory per watched instance (KiB)':<60}{(rss_after - rss_before) / CAPACITY / 1024:>10.1f}  <= 64")
    print(f"{f'verdict change seen, p50 (ms, {FLIPS} flips)':<60}{statistics.median(seen) * 1000:>10.1f}")
    print(f"{'verdict change seen, p99 (ms)':<60}{p99 * 1000:>10.1f}  <= 100")
    print(f"{'verdict change seen, max (ms)':<60}{seen[-1] * 1000:>10.1f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=300.0, help="seconds of the idle window")
    parser.add_argument("--profile", action="store_true", help="where the idle window's CPU goes (to stderr)")
    parser.add_argument("--agents", nargs=3, metavar=("FILE", "CONTROL_PORT", "METRICS_PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agents:
        listen_file, control_port, metrics_port = args.agents
        asyncio.run(run_agents(json.loads(Path(listen_file).read_text()), int(control_port), int(metrics_port)))
        sys.exit(0)
    sys.exit(asyncio.run(main(args.idle, args.profile)))
