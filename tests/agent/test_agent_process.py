"""The agent as a process: command line, sd_notify readiness, SIGTERM, and its systemd unit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from overhaul.localhost import free_port
from tests.conftest import FakeApp, agent_argv, fast_settings

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overhaul_agent", *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_bad_settings_exit_2_naming_the_field(tmp_path: Path) -> None:
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps({"protocol": "http", "port": 80, "requestPath": "/", "numberOfProbes": 99}))
    result = run_cli("--settings", str(settings))
    assert result.returncode == 2
    assert "settings.numberOfProbes: must be 1..24" in result.stderr


GOOD = '"protocol": "https", "port": 8443, "requestPath": "/h"'


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ('{"protocol": "http", "requestPath": "/", "port": 1' + "0" * 400 + "}", "settings.port: is out of range"),
        ("[" * 100_000 + "]" * 100_000, "--settings: "),
        ('{"protocol": "http", "port": 80, "requestPath": "/", "gracePeriod": 1e999}', "settings.gracePeriod: must be"),
        (
            "{" + GOOD + ', "overhaul": {"verifyTls": true, "caFile": "/nonexistent/ca.pem"}}',
            "settings.overhaul.caFile: cannot load /nonexistent/ca.pem",
        ),
        ("{" + GOOD + ', "overhaul": {"verifyTls": true, "caFile": "/etc/hostname"}}', "settings.overhaul.caFile"),
        ("{" + GOOD + ', "overhaul": {"host": "not a host!"}}', "settings.overhaul.host: must be a host name"),
        ("{" + GOOD + ', "overhaul": {"host": "-bad.example"}}', "settings.overhaul.host"),
        ('{"protocol": "http", "port": 80, "requestPath": "/"' + " " * (1 << 20) + "}", "larger than"),
    ],
    ids=["huge-port", "deep-nesting", "infinite", "missing-ca", "bad-ca", "bad-host", "bad-label", "huge-file"],
)
def test_every_bad_settings_file_exits_2_naming_the_field(tmp_path: Path, text: str, wanted: str) -> None:
    settings = tmp_path / "s.json"
    settings.write_text(text)
    result = run_cli("--settings", str(settings), "--check")
    assert result.returncode == 2, result.stderr
    assert wanted in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_deeply_nested_probe_flag_exits_2() -> None:
    deep = run_cli("--probe", "port=" + "[" * 100_000, "--check")
    assert deep.returncode == 2 and "--probe" in deep.stderr and "Traceback" not in deep.stderr, deep.stderr


def test_good_hosts_are_accepted(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "app.internal", "localhost."):
        settings = tmp_path / "s.json"
        settings.write_text(
            json.dumps({"protocol": "http", "port": 80, "requestPath": "/", "overhaul": {"host": host}})
        )
        result = run_cli("--settings", str(settings), "--check")
        assert result.returncode == 0, (host, result.stderr)


def test_unreadable_and_invalid_files_are_named(tmp_path: Path) -> None:
    missing = run_cli("--settings", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "--settings: cannot read" in missing.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = run_cli("--metadata", str(broken))
    assert result.returncode == 2 and "--metadata:" in result.stderr and "not valid JSON" in result.stderr


def test_check_merges_metadata_file_and_flags(tmp_path: Path) -> None:
    metadata = tmp_path / "metadata.json"
    health = {"name": "h", "properties": {"type": "ApplicationHealthLinux", "settings": fast_settings(8080)}}
    metadata.write_text(json.dumps({"instanceId": "1", "extensionProfile": {"extensions": [health]}}))
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps({"settings": {"numberOfProbes": 3}}))
    result = run_cli(
        "--metadata",
        str(metadata),
        "--settings",
        str(settings),
        "--probe",
        "port=9000",
        "--probe",
        "requestPath=/ready",
        "--check",
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)["settings"]
    assert (doc["port"], doc["requestPath"], doc["numberOfProbes"], doc["protocol"]) == (
        9000,
        "/ready",
        3,
        "http",
    )


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    yield sock
    sock.close()


async def receive(sock: socket.socket, wanted: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while True:
            message = (await loop.sock_recv(sock, 4096)).decode()
            if wanted in message.splitlines():
                return


async def test_sigterm_answers_in_flight_requests_and_exits_0_within_2s(
    fake_app: FakeApp, notify_socket: socket.socket, tmp_path: Path
) -> None:
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps(fast_settings(fake_app.port)))
    port = free_port()
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname()}
    proc = await asyncio.create_subprocess_exec(
        *agent_argv(port, tmp_path / "state", "--settings", str(settings)),
        env=env,
    )
    try:
        await receive(notify_socket, "READY=1")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                etag = resp.headers["ETag"]
            in_flight = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/health?wait=60&etag={etag}"))
            await asyncio.sleep(0.3)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 5)
            exited = time.monotonic() - sent
            resp = await in_flight
            assert resp.status in (200, 503)
            assert "applicationHealthState" in await resp.json()
            resp.release()
        assert code == 0
        assert exited < 2.0
        await receive(notify_socket, "STOPPING=1", timeout=1)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("unit_name", "program"),
    [("overhaul-agent.service", "overhaul-agent"), ("overhaul-orchestrator.service", "overhaul")],
)
def test_systemd_units_verify(tmp_path: Path, unit_name: str, program: str) -> None:
    # The units name where packages install the programs; point a copy at this environment's programs so
    # systemd-analyze can check the executable too, and require silence: it reports unknown keys with rc 0.
    installed = shutil.which(program, path=str(Path(sys.executable).parent))
    assert installed is not None
    source = ROOT / "systemd" / unit_name
    text = source.read_text()
    assert f"ExecStart=/usr/local/bin/{program} " in text or f"ExecStart=/usr/local/bin/{program}\n" in text
    unit = tmp_path / unit_name
    unit.write_text(text.replace(f"/usr/local/bin/{program}", installed))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr


async def wait_for_health(session: aiohttp.ClientSession, port: int, status: int, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                    if resp.status == status:
                        return
            await asyncio.sleep(0.1)


async def fresh_health_timings(port: int, times: int = 7) -> list[float]:
    """Seconds each of ``times`` GET /health took on a new connection (each must answer 200)."""
    timings = []
    for _ in range(times):
        started = time.perf_counter()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as fresh,
            fresh.get(f"http://127.0.0.1:{port}/health") as resp,
        ):
            await resp.read()
            assert resp.status == 200
        timings.append(time.perf_counter() - started)
    return timings


@contextlib.asynccontextmanager
async def agent_with_1024_files(
    fake_app: FakeApp, tmp_path: Path, *, tcp_port: int = 0
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """The agent as a process under systemd's default open-files limit, probing ``fake_app``: (process, port);
    ``tcp_port`` 0: no TCP health port. It must still be alive at the end, and stop cleanly on SIGTERM."""
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps(fast_settings(fake_app.port)))
    port = free_port()

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    proc = await asyncio.create_subprocess_exec(
        *agent_argv(port, tmp_path / "state", "--settings", str(settings), tcp_port=tcp_port), preexec_fn=limit_files
    )
    try:
        yield proc, port
        assert proc.returncode is None, "the agent died"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


@pytest.mark.load
async def test_5000_idle_connections_leave_health_answering_and_the_agent_alive(
    fake_app: FakeApp, tmp_path: Path
) -> None:
    """Under systemd's default of 1,024 open files: idle connections are capped (the oldest idle one makes room)
    and closed when they send no request head in time, so /health keeps answering fast, and the verdict can still
    change (the TCP health port, closed while Unhealthy, opens again: it needs a file descriptor) with the agent
    alive."""
    idle: list[socket.socket] = []
    try:
        async with (
            agent_with_1024_files(fake_app, tmp_path, tcp_port=free_port()) as (_, port),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        ):
            await wait_for_health(session, port, 200)
            fake_app.set_state("Unhealthy")  # the TCP health port closes...
            await wait_for_health(session, port, 503)
            for _ in range(5000):
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", port))
                idle.append(sock)
            await asyncio.sleep(1)  # the agent accepts them, closing the oldest beyond its cap
            fake_app.set_state("Healthy")  # ... and must open again
            await wait_for_health(session, port, 200)
            timings = await fresh_health_timings(port)
            assert statistics.median(timings) < 0.05, timings
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.load
async def test_1100_blocking_queries_leave_health_and_the_watch_answering(fake_app: FakeApp, tmp_path: Path) -> None:
    """Blocking queries hold their connection (a request is in flight, so the gate cannot evict it): beyond a cap
    the oldest is answered at once (as a blocking query may be), which leaves room for /health and a new watch."""
    held: list[socket.socket] = []
    try:
        async with (
            agent_with_1024_files(fake_app, tmp_path) as (_, port),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        ):
            await wait_for_health(session, port, 200)
            async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                etag = resp.headers["ETag"]
            query = f"GET /health?wait=600&etag={etag.strip(chr(34))} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

            def flood() -> None:  # in a thread: the application the agent probes answers meanwhile
                for _ in range(1100):
                    sock = socket.socket()
                    sock.settimeout(5)
                    try:
                        sock.connect(("127.0.0.1", port))
                        sock.sendall(query)
                    except OSError:
                        sock.close()  # refused or reset: the agent is full, which is what the next lines check
                        continue
                    held.append(sock)

            await asyncio.to_thread(flood)
            await asyncio.sleep(1)
            timings = await fresh_health_timings(port)
            # The orchestrator's watch, after the flood: blocking queries on new connections, each with the last
            # ETag (an early answer is allowed), hear the change.
            fake_app.set_state("Unhealthy")
            async with asyncio.timeout(20), aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as fresh:
                state = "Healthy"
                while state != "Unhealthy":
                    async with fresh.get(f"http://127.0.0.1:{port}/health?wait=25&etag={etag}") as resp:
                        state, etag = (await resp.json())["applicationHealthState"], resp.headers["ETag"]
            print(f"/health under 1,100 blocking queries: {sorted(timings)}")
            assert statistics.median(timings) < 0.1, timings
    finally:
        for sock in held:
            sock.close()


def test_a_port_in_use_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(
            "--probe", "protocol=tcp", "--probe", "port=9", "--host", "127.0.0.1", "--port", str(port),
            "--tcp-port", "0", "--state-dir", str(tmp_path / "state"),
        )  # fmt: skip
    assert result.returncode == 1
    assert f"overhaul-agent: cannot listen on 127.0.0.1:{port}: " in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
