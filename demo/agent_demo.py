"""The agent for real: a sample application, the agent probing it, and the application's health flipping.

Starts demo/sample_app.py and overhaul-agent (with a CustomScript extension and the Application Health
settings in an instance metadata document), follows the agent's verdict with blocking queries, and prints
every change together with what the TCP health port does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from overhaul.localhost import free_port

HERE = Path(__file__).resolve().parent
START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:5.1f}s] {text}", flush=True)


async def tcp_accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def follow(session: aiohttp.ClientSession, url: str, tcp_port: int, seen: asyncio.Queue[str]) -> None:
    """Blocking queries: one request per change of the verdict, not one per probe."""
    etag = '"0.0"'
    last = ""
    while True:
        try:
            async with session.get(f"{url}/health", params={"wait": "30", "etag": etag}) as resp:
                doc: dict[str, Any] = await resp.json()
                etag = resp.headers["ETag"]
                status = resp.status
        except aiohttp.ClientError:
            await asyncio.sleep(0.2)  # the agent is still starting
            continue
        state = doc["applicationHealthState"]
        tcp = "accepts" if await tcp_accepts(tcp_port) else "refuses"
        phase = (doc.get("customMetrics") or {}).get("rollingUpgrade", {}).get("PhaseOrderingNumber")
        extra = f", PhaseOrderingNumber={phase}" if phase is not None else ""
        line = f"agent: {state:<12} HTTP {status}, TCP port {tcp}{extra} - {doc['reason']}"
        if line != last:
            say(line)
            last = line
        await seen.put(state)


async def expect(seen: asyncio.Queue[str], state: str, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while await seen.get() != state:
            pass


async def control(session: aiohttp.ClientSession, app_port: int, **query: str) -> None:
    text = ", ".join(f"{k}={v}" for k, v in query.items())
    say(f"app:   set {text}")
    async with session.post(f"http://127.0.0.1:{app_port}/control", params=query) as resp:
        resp.raise_for_status()


async def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="overhaul-agent-demo-"))
    app_port, agent_port, tcp_port = free_port(), free_port(), free_port()
    health_settings = {
        "protocol": "http",
        "port": app_port,
        "requestPath": "/health",
        "intervalInSeconds": 1,
        "numberOfProbes": 2,
        "gracePeriod": 20,
        "overhaul": {"fastProbes": True},
    }
    metadata = {
        "instanceId": "0",
        "scaleSet": "demo",
        "imageReference": {"publisher": "overhaul", "offer": "demo", "sku": "sample", "version": "1.0.0"},
        "extensionProfile": {
            "extensions": [
                {
                    "name": "health",
                    "properties": {"type": "ApplicationHealthLinux", "settings": health_settings},
                },
                {
                    "name": "setup",
                    "properties": {
                        "type": "CustomScript",
                        "settings": {"commandToExecute": "echo configuring the app; sleep 2; echo done"},
                        "provisionAfterExtensions": ["health"],
                    },
                },
            ]
        },
    }
    (work / "metadata.json").write_text(json.dumps(metadata, indent=2))
    say(f"work directory {work}")
    app = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "sample_app.py"), "--port", str(app_port), "--state", "Healthy"
    )
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "overhaul_agent",
        "--metadata",
        str(work / "metadata.json"),
        "--host",
        "127.0.0.1",
        "--port",
        str(agent_port),
        "--tcp-port",
        str(tcp_port),
        "--state-dir",
        str(work / "state"),
        "--log-level",
        "warning",
    )
    say(f"started sample app on :{app_port} and overhaul-agent on :{agent_port} (TCP health port :{tcp_port})")
    seen: asyncio.Queue[str] = asyncio.Queue()
    code = 1
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        watcher = asyncio.create_task(follow(session, f"http://127.0.0.1:{agent_port}", tcp_port, seen))
        try:
            await expect(seen, "Healthy")
            await control(session, app_port, state="Unhealthy")
            await expect(seen, "Unhealthy")
            await control(session, app_port, state="garbage")
            await expect(seen, "Unknown")
            await control(session, app_port, state="Healthy", phase="1")
            await expect(seen, "Healthy")
            say("stopping the agent with SIGTERM")
            agent.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(agent.wait(), 5)
            say(f"agent exited with code {code}")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for proc in (agent, app):
                if proc.returncode is None:
                    proc.terminate()
                    await asyncio.wait_for(proc.wait(), 5)
    say(f"extension output kept on the 'OS disk': {work / 'state/extensions/setup/stdout'}")
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
