"""A real webhook receiver for event tests: an aiohttp server on a loopback port, on a thread of its own, that
answers Event Grid's validation handshake and records every CloudEvent delivered to it. It can refuse the
handshake, fail deliveries with a status, or hang."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from overhaul.localhost import free_port


@dataclass
class Receiver:
    url: str
    handshakes: list[dict[str, str]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)  # every delivery, duplicates included
    content_types: list[str] = field(default_factory=list)
    allow_handshake: bool = True
    fail_with: int | None = None  # answer every delivery with this status
    hang: bool = False  # never answer a delivery
    reset: bool = False  # drop the connection without an answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self) -> list[str]:
        with self.lock:
            return [e["id"] for e in self.received]

    def types(self) -> list[str]:
        with self.lock:
            return [e["type"] for e in self.received]

    def wait_for(self, wanted: set[str], timeout: float = 60) -> None:
        """Until events with every id of ``wanted`` arrived."""
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.ids()):
            assert time.monotonic() < deadline, f"missing events: {sorted(wanted - set(self.ids()))}"
            time.sleep(0.05)


def _app(receiver: Receiver) -> web.Application:
    async def options(request: web.Request) -> web.Response:
        receiver.handshakes.append(dict(request.headers))
        if not receiver.allow_handshake:
            return web.Response(status=403)
        origin = request.headers.get("WebHook-Request-Origin", "")
        return web.Response(status=200, headers={"WebHook-Allowed-Origin": origin})

    async def post(request: web.Request) -> web.Response:
        if receiver.hang:
            await asyncio.sleep(3600)
        if receiver.reset and request.transport is not None:
            request.transport.abort()  # a TCP reset, as a crashing receiver gives
            raise web.HTTPInternalServerError  # never sent: the connection is gone
        if receiver.fail_with is not None:
            return web.Response(status=receiver.fail_with)
        event = json.loads(await request.read())
        with receiver.lock:
            receiver.received.append(event)
            receiver.content_types.append(request.headers.get("Content-Type", ""))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("OPTIONS", "/hook", options)
    app.router.add_post("/hook", post)
    return app


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    port = free_port()
    receiver = Receiver(f"http://127.0.0.1:{port}/hook")
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(_app(receiver), shutdown_timeout=1)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, name="webhook receiver", daemon=True)
    thread.start()
    assert ready.wait(10), "the webhook receiver did not start"
    try:
        yield receiver
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()


def subscription_body(url: str, **properties: Any) -> dict[str, Any]:
    destination = {"endpointType": "WebHook", "properties": {"endpointUrl": url}}
    return {"properties": {"destination": destination, "eventDeliverySchema": "CloudEventSchemaV1_0", **properties}}
