"""The REST API's front door: a cap on open connections and a deadline for each request head (the agent has the
same gate; the two programs share no code).

Idle connections must never starve the clients that matter (the CLI, the SDK, /healthz), nor exhaust the
process' file descriptors. So at the cap the oldest idle connection — one that has not yet sent a request
head, or whose requests have all been answered (keep-alive) — is closed to make room (only when every open
connection has a request in flight is a new one refused), and a connection that has not sent its request head
within ``header_timeout`` is closed. The application tells the gate when a request ends (``gate_middleware``).
A refused or evicted connection is counted on the gate, never logged one by one."""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable

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
        self._waiting: OrderedDict[GuardedConnection, None] = OrderedDict()  # idle, oldest first
        self._by_transport: dict[asyncio.BaseTransport, GuardedConnection] = {}

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
            self._waiting.move_to_end(conn)
        else:
            self._waiting.pop(conn, None)

    def opened(self, conn: GuardedConnection, transport: asyncio.BaseTransport) -> None:
        self.open += 1
        self._by_transport[transport] = conn
        self.waiting(conn, True)

    def closed(self, conn: GuardedConnection) -> None:
        self.waiting(conn, False)
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)
        self.open -= 1  # asyncio calls connection_lost once, after connection_made

    def request_ended(self, transport: asyncio.BaseTransport | None) -> None:
        """The connection's request was answered: until its next one it is idle, so it may make room."""
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is not None and conn.head_seen:
            conn.in_flight -= 1
            if conn.in_flight <= 0:
                conn.in_flight = 0
                self.waiting(conn, True)

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is not None:
            conn.in_flight += 1
            self.waiting(conn, False)


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
        self.head_seen = False
        self.in_flight = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.gate.opened(self, transport)
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
                self.head_seen = True
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
        self.gate.closed(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GateHolder:
    """The application's handle on the gate of the site that serves it (the site is made after the app)."""

    def __init__(self) -> None:
        self.gate: ConnectionGate | None = None


GATE_KEY = web.AppKey("gate", GateHolder)


@web.middleware
async def gate_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tells the site's gate when a request starts and ends, so an answered keep-alive connection can make room."""
    holder = request.app.get(GATE_KEY)
    gate = holder.gate if holder is not None else None
    if gate is None:
        return await handler(request)
    gate.request_started(request.transport)
    try:
        return await handler(request)
    finally:
        gate.request_ended(request.transport)


class GatedSite(web.TCPSite):
    """aiohttp's TCP site with the gate in front of its server."""

    __slots__ = ("_header_timeout", "_limit", "gate")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        limit: int,
        header_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, host, port, reuse_address=True, backlog=BACKLOG, ssl_context=ssl_context)
        self._limit = limit
        self._header_timeout = header_timeout
        self.gate: ConnectionGate | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self.gate = ConnectionGate(server, self._limit, self._header_timeout)
        app = getattr(self._runner, "app", None)
        holder = app.get(GATE_KEY) if isinstance(app, web.Application) else None
        if holder is not None:
            holder.gate = self.gate
        # With TLS the handshake must end within the head deadline too (a silent client holds no slot longer).
        self._server = await asyncio.get_running_loop().create_server(
            self.gate,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._header_timeout if self._ssl_context else None,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]


def connection_limit(wanted: int, reserved: int, floor: int = 1) -> int:
    """The connection cap: what was asked, within the open-files limit less the ``reserved`` files the program
    itself needs (never below ``floor``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(floor, min(wanted, soft - reserved))
