"""Probes against real local servers: HTTP, HTTPS with a self-signed certificate, TCP, hung and odd apps."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from overhaul.localhost import free_port
from overhaul_agent.probe import ApplicationProbe
from overhaul_agent.probe_body import MAX_BODY_BYTES, HealthState
from overhaul_agent.settings import parse_settings
from tests.conftest import FakeApp, fast_settings

H, U, K = HealthState.HEALTHY, HealthState.UNHEALTHY, HealthState.UNKNOWN


async def probe_once(settings: dict[str, object]) -> tuple[HealthState, str]:
    probe = ApplicationProbe(parse_settings(settings))
    try:
        result = await probe.probe()
    finally:
        await probe.close()
    return result.state, result.detail


async def test_http_flips_with_the_application(fake_app: FakeApp) -> None:
    probe = ApplicationProbe(parse_settings(fast_settings(fake_app.port)))
    try:
        assert (await probe.probe()).state is H
        fake_app.set_state("Unhealthy")
        assert (await probe.probe()).state is U
        fake_app.set_state("Healthy")
        assert (await probe.probe()).state is H
    finally:
        await probe.close()


@pytest.mark.parametrize(
    ("status", "body", "state", "detail"),
    [
        (200, b"<html>ok</html>", K, "not JSON"),
        (200, b'{"applicationHealthState": ["Healthy"]}', K, "must be Healthy or Unhealthy"),
        (200, b'"Healthy"', K, "not a JSON object"),
        (503, b'{"applicationHealthState": "Healthy"}', K, "503"),
    ],
)
async def test_odd_answers_are_unknown(
    fake_app: FakeApp, status: int, body: bytes, state: HealthState, detail: str
) -> None:
    fake_app.status, fake_app.body = status, body
    got, text = await probe_once(fast_settings(fake_app.port))
    assert got is state
    assert detail in text


def roomy(port: int) -> dict[str, object]:
    """A megabyte to read: a probe timeout a busy machine cannot miss (fast probes allow 80 ms)."""
    return fast_settings(port, intervalInSeconds=30)


async def test_body_over_one_mib_is_capped(fake_app: FakeApp) -> None:
    padding = " " * (2 * MAX_BODY_BYTES)
    fake_app.body = ('{"applicationHealthState": "Healthy", "pad": "' + padding + '"}').encode()
    state, detail = await probe_once(roomy(fake_app.port))
    assert state is K
    assert "larger than" in detail


async def test_body_just_under_the_cap_is_read(fake_app: FakeApp) -> None:
    head = '{"applicationHealthState": "Healthy", "pad": "'
    fake_app.body = (head + "x" * (MAX_BODY_BYTES - len(head) - 2) + '"}').encode()
    assert len(fake_app.body) == MAX_BODY_BYTES
    state, _ = await probe_once(roomy(fake_app.port))
    assert state is H


async def test_invalid_custom_metrics_are_reported(fake_app: FakeApp) -> None:
    fake_app.set_state("Healthy", custom_metrics='{"rollingUpgrade": {"PhaseOrderingNumber": "first"}}')
    probe = ApplicationProbe(parse_settings(fast_settings(fake_app.port)))
    try:
        result = await probe.probe()
    finally:
        await probe.close()
    assert result.state is H
    assert result.custom_metrics is None
    assert result.custom_metrics_error is not None and "PhaseOrderingNumber" in result.custom_metrics_error


async def test_hung_application_times_out_within_the_probe_timeout(fake_app: FakeApp) -> None:
    fake_app.hang = True
    settings = fast_settings(fake_app.port, intervalInSeconds=0.5)
    started = time.monotonic()
    state, detail = await probe_once(settings)
    elapsed = time.monotonic() - started
    assert state is K
    assert "within" in detail
    assert elapsed < 0.5  # the timeout (0.8 x interval) keeps the probe inside its period


async def test_refused_http_is_unknown() -> None:
    state, detail = await probe_once(fast_settings(free_port()))
    assert state is K
    assert "127.0.0.1" in detail


async def test_tcp_connect_healthy_refused_unhealthy() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = {"protocol": "tcp", "port": port, "intervalInSeconds": 0.2, "overhaul": {"fastProbes": True}}
    try:
        assert (await probe_once(settings))[0] is H
    finally:
        server.close()
        await server.wait_closed()
    state, detail = await probe_once(settings)
    assert state is U
    assert "failed" in detail


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def https_app(certificate_authority: trustme.CA) -> AsyncIterator[int]:
    cert = certificate_authority.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"applicationHealthState": "Healthy"})

    app = web.Application()
    app.router.add_get("/health", handler)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    yield port
    await runner.cleanup()


async def test_https_self_signed_without_verification_as_azure(https_app: int) -> None:
    settings = fast_settings(https_app, protocol="https")
    assert (await probe_once(settings))[0] is H


async def test_https_verification_rejects_an_unknown_ca(https_app: int) -> None:
    settings = fast_settings(https_app, protocol="https", overhaul={"fastProbes": True, "verifyTls": True})
    state, detail = await probe_once(settings)
    assert state is K
    assert "certificate" in detail.lower() or "ssl" in detail.lower()


async def test_https_verification_with_the_ca_file(
    https_app: int, certificate_authority: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(ca_file))
    settings = fast_settings(
        https_app, protocol="https", overhaul={"fastProbes": True, "verifyTls": True, "caFile": str(ca_file)}
    )
    assert (await probe_once(settings))[0] is H


async def test_http_against_https_port_is_unknown(https_app: int) -> None:
    state, _ = await probe_once(fast_settings(https_app))
    assert state is K
