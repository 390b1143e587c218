"""Probes of the local application over TCP, HTTP and HTTPS, on a stable schedule."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable

import aiohttp

from overhaul_agent.probe_body import MAX_BODY_BYTES, HealthState, ProbeResult, parse_http_answer
from overhaul_agent.settings import ProbeSettings, Protocol


async def _read_capped(content: aiohttp.StreamReader, cap: int) -> tuple[bytes, bool]:
    """Read at most ``cap`` bytes; the flag says the body was longer (and was not read further)."""
    chunks: list[bytes] = []
    size = 0
    while size <= cap:
        chunk = await content.read(cap + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    body = b"".join(chunks)
    return body[:cap], size > cap


def tls_context(settings: ProbeSettings) -> ssl.SSLContext | bool:
    """What an https probe verifies the application with; False: it does not verify. Raises OSError or
    ssl.SSLError when caFile cannot be loaded (checked when the settings are read, not at the first probe)."""
    if settings.protocol is not Protocol.HTTPS or not settings.verify_tls:
        return False
    return ssl.create_default_context(cafile=settings.ca_file)


class ApplicationProbe:
    """Sends one probe at a time to the application described by ``settings``."""

    def __init__(self, settings: ProbeSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        return tls_context(self.settings)

    async def _http_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=1, force_close=False)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.settings.probe_timeout),
                headers={"User-Agent": "overhaul-agent"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self) -> ProbeResult:
        started = time.monotonic()
        at = time.time()
        if self.settings.protocol is Protocol.TCP:
            state, detail, status = await self._probe_tcp()
            return ProbeResult(state, detail, at, time.monotonic() - started, status)
        return await self._probe_http(started, at)

    async def _probe_tcp(self) -> tuple[HealthState, str, None]:
        s = self.settings
        try:
            async with asyncio.timeout(s.probe_timeout):
                _, writer = await asyncio.open_connection(s.host, s.port)
        except TimeoutError:
            return HealthState.UNHEALTHY, f"TCP connect to {s.host}:{s.port} timed out", None
        except OSError as exc:
            return (
                HealthState.UNHEALTHY,
                f"TCP connect to {s.host}:{s.port} failed: {exc.strerror or exc}",
                None,
            )
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(s.probe_timeout):
                await writer.wait_closed()
        return HealthState.HEALTHY, f"TCP connect to {s.host}:{s.port} succeeded", None

    async def _probe_http(self, started: float, at: float) -> ProbeResult:
        session = await self._http_session()
        url = self.settings.url()
        try:
            async with session.get(url, allow_redirects=False) as resp:
                body, truncated = await _read_capped(resp.content, MAX_BODY_BYTES)
                status = resp.status
        except TimeoutError:
            return ProbeResult(
                HealthState.UNKNOWN,
                f"no answer from {url} within {self.settings.probe_timeout:g}s",
                at,
                time.monotonic() - started,
            )
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return ProbeResult(
                HealthState.UNKNOWN,
                f"{url}: {type(exc).__name__}: {exc}"[:500],
                at,
                time.monotonic() - started,
            )
        verdict = parse_http_answer(status, body, truncated=truncated)
        return ProbeResult(
            verdict.state,
            verdict.detail,
            at,
            time.monotonic() - started,
            status,
            verdict.custom_metrics,
            verdict.custom_metrics_error,
        )


async def probe_forever(
    probe: ApplicationProbe, interval: float, on_result: Callable[[ProbeResult], None], stop: asyncio.Event
) -> None:
    """Probe every ``interval`` seconds on a fixed schedule: a slow answer never shifts the next probe."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while not stop.is_set():
        on_result(await probe.probe())
        next_at += interval
        now = loop.time()
        if next_at < now:
            # Fell behind (e.g. the machine was suspended): skip the missed slots instead of bursting.
            next_at = now + interval - ((now - next_at) % interval)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(next_at - now):
                await stop.wait()
