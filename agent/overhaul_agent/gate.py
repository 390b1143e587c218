"""The agent's front door: a cap on open connections and a deadline for each request head.

Idle connections must never starve the one client that matters (the orchestrator's health query), nor exhaust
the process' file descriptors. So at the cap the oldest connection that has not yet sent a request head is closed
to make room (only when every open connection has a request in flight is a new one refused), and a connection
that has not sent its request head within ``header_timeout`` is closed."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)
HEAD_END = b"\r\n\r\n"
BACKLOG = 128


class ConnectionGate:
    """A protocol factory in front of aiohttp's server."""

    def __init__(self, server: Callable[[], asyncio.Protocol], limit: int, header_timeout: float) -> None:
        self.server = server
        self.limit = limit
        self.header_timeout = header_timeout
        self.open = 0
        self.evicted = 0
        self.refused = 0
        self._waiting: OrderedDict[GuardedConnection, None] = OrderedDict()  # no request head yet, oldest first

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limit:
            if self._waiting:
                oldest, _ = self._waiting.popitem(last=False)
                oldest.close()
                self.evicted += 1
            else:
                self.refused += 1
                return _Refused()
        return GuardedConnection(self, self.server())

    def waiting(self, conn: GuardedConnection, waiting: bool) -> None:
        if waiting:
            self._waiting[conn] = None
        else:
            self._waiting.pop(conn, None)


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class GuardedConnection(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol, watching for the end of each request head."""

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self.gate = gate
        self.inner = inner
        self.transport: asyncio.BaseTransport | None = None
        self._tail = b""
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.gate.open += 1
        self.gate.waiting(self, True)
        self._deadline = asyncio.get_running_loop().call_later(self.gate.header_timeout, self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        log.debug("closing a connection that sent no request head within %gs", self.gate.header_timeout)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            seen = self._tail + data
            if HEAD_END in seen:
                self._deadline.cancel()
                self._deadline = None
                self.gate.waiting(self, False)
            else:
                self._tail = seen[-(len(HEAD_END) - 1) :]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.gate.waiting(self, False)
        self.gate.open -= 1  # asyncio calls connection_lost once, after connection_made
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GatedSite(web.TCPSite):
    """aiohttp's TCP site with the gate in front of its server."""

    __slots__ = ("_header_timeout", "_limit", "gate")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, limit: int, header_timeout: float) -> None:
        super().__init__(runner, host, port, reuse_address=True, backlog=BACKLOG)
        self._limit = limit
        self._header_timeout = header_timeout
        self.gate: ConnectionGate | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self.gate = ConnectionGate(server, self._limit, self._header_timeout)
        self._server = await asyncio.get_running_loop().create_server(
            self.gate, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
