"""Platform notices pushed to an instance's agent (PUT /platform/tags with the OS disk's platform token), for
instances whose config drive is not a directory of this machine: VMs, and containers on another host."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

from overhaul.ports.driver import DriverError


async def push_notice(address: str, port: int, token: str, tags: Mapping[str, str], timeout: float) -> None:
    """A notice is retried for ``timeout`` seconds while the agent does not answer yet; a withdrawal (no tags) is
    tried once (an agent not answering has nobody to approve with)."""
    url = f"http://{address}:{port}/platform/tags"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (timeout if tags else 0)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while True:
            try:
                async with session.put(url, json={"tags": dict(tags)}, headers=headers) as resp:
                    if resp.status == 200:
                        return
                    raise DriverError(f"the agent answered the notice with {resp.status}: {await resp.text()}")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if loop.time() >= deadline:
                    raise DriverError(f"the agent on {address}:{port} did not take the notice: {exc}") from exc
            await asyncio.sleep(1)  # an agent still starting: nothing to wait on but time
