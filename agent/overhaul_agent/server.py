"""The agent's endpoints: GET /health (with blocking queries), GET /metrics, and the TCP health port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections import OrderedDict

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from overhaul_agent.board import HealthBoard
from overhaul_agent.gate import GATE_KEY, GateHolder, gate_middleware
from overhaul_agent.metrics import AgentMetrics
from overhaul_agent.platform import PlatformNotices
from overhaul_agent.probe_body import HealthState

log = logging.getLogger(__name__)
MAX_WAIT_SECONDS = 600.0
RETRY_SECONDS = 0.5  # the TCP health port's next try after it could not listen or accept
BOARD_KEY = web.AppKey("board", HealthBoard)
METRICS_KEY = web.AppKey("metrics", AgentMetrics)
NOTICES_KEY = web.AppKey("notices", PlatformNotices)


class BlockingQueries:
    """Blocking queries hold a connection with a request in flight, which the connection gate cannot evict. So at
    most ``cap`` wait at once (below the gate's limit, leaving a reserve for /health, /metrics and new watches): a
    new one beyond it answers the oldest at once, as a blocking query may always be answered early."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.released = 0
        self._waiting: OrderedDict[asyncio.Event, None] = OrderedDict()

    async def wait(self, board: HealthBoard, etag: str, timeout: float) -> None:
        while len(self._waiting) >= self.cap:
            oldest, _ = self._waiting.popitem(last=False)
            oldest.set()
            self.released += 1
        release = asyncio.Event()
        self._waiting[release] = None
        try:
            await board.wait_for_change(etag, timeout, release)
        finally:
            self._waiting.pop(release, None)


BLOCKING_KEY = web.AppKey("blocking", BlockingQueries)


def blocking_cap(connection_limit: int) -> int:
    """Of the gate's connections, those blocking queries may hold: all but a reserve of an eighth (at least 16)."""
    return max(1, connection_limit - max(16, connection_limit // 8))


def _bad_request(field: str, message: str) -> web.Response:
    body = {"error": {"code": "InvalidParameter", "target": field, "message": f"{field}: {message}"}}
    return web.json_response(body, status=400)


def _parse_wait(raw: str) -> float:
    text = raw.strip().lower().removesuffix("s")
    value = float(text)
    if not 0 <= value <= MAX_WAIT_SECONDS:
        raise ValueError
    return value


ETAG_PATTERN = re.compile(r'(?:W/)?"?([0-9a-f]+\.[0-9]+)"?')


def _parse_etag(raw: str) -> str | None:
    match = ETAG_PATTERN.fullmatch(raw.strip())
    return f'"{match.group(1)}"' if match else None


async def health(request: web.Request) -> web.Response:
    board = request.app[BOARD_KEY]
    query = request.query
    if "wait" in query:
        try:
            wait = _parse_wait(query["wait"])
        except ValueError:
            return _bad_request("wait", f"must be a number of seconds 0..{MAX_WAIT_SECONDS:g}, got {query['wait']!r}")
        seen = query.get("etag") or request.headers.get("If-None-Match")
        if seen is not None:
            etag = _parse_etag(seen)
            if etag is None:
                return _bad_request("etag", f"must be an ETag this agent returned, got {seen!r}")
            await request.app[BLOCKING_KEY].wait(board, etag, wait)
    status = 200 if board.state is HealthState.HEALTHY else 503
    return web.Response(
        body=board.body(),
        status=status,
        content_type="application/json",
        headers={"ETag": board.etag, "Cache-Control": "no-store"},
    )


async def tags_list(request: web.Request) -> web.Response:
    """Azure IMDS's ``compute/tagsList``: the platform's tags for this instance (Platform.PendingOSUpgrade)."""
    tags = request.app[NOTICES_KEY].tags()
    return web.json_response([{"name": k, "value": v} for k, v in sorted(tags.items())])


def _platform_refusal(notices: PlatformNotices, request: web.Request) -> web.Response | None:
    """Platform endpoints change what the platform does: they need this OS disk's platformToken (in the metadata
    on its config drive, which only root inside the instance reads), never just a route to the port."""
    if not notices.token:
        body = {
            "error": {
                "code": "Forbidden",
                "message": "this instance's metadata holds no platformToken: its platform endpoints are closed",
            }
        }
        return web.json_response(body, status=403)
    if not notices.may_push(request.headers.get("Authorization")):
        body = {
            "error": {
                "code": "Unauthorized",
                "message": "the platform token is missing or wrong: send 'Authorization: Bearer <platformToken>' "
                "from the instance's metadata",
            }
        }
        return web.json_response(body, status=401, headers={"WWW-Authenticate": "Bearer"})
    return None


async def approve_os_upgrade(request: web.Request) -> web.Response:
    """The application approves the pending OS upgrade (osRollingUpgradeDeferral) with its platformToken; the
    orchestrator hears it through /health."""
    notices = request.app[NOTICES_KEY]
    refusal = _platform_refusal(notices, request)
    if refusal is not None:
        return refusal
    pending = notices.pending_os_upgrade()
    if pending is None:
        body = {"error": {"code": "NoPendingOSUpgrade", "message": "no OS upgrade is pending for this instance"}}
        return web.json_response(body, status=409)
    request.app[BOARD_KEY].approve_os_upgrade(pending)
    return web.json_response({"approvedOSUpgrade": pending})


async def push_tags(request: web.Request) -> web.Response:
    """The orchestrator's platform notices for an instance whose config drive cannot change (a VM): the same
    document as platform.json, with the instance's platformToken."""
    notices = request.app[NOTICES_KEY]
    if not notices.token:
        return await not_found(request)  # notices come from the config drive here
    refusal = _platform_refusal(notices, request)
    if refusal is not None:
        return refusal
    try:
        doc = await request.json()
    except (ValueError, RecursionError):
        return _bad_request("body", "must be a JSON object of tags (no deeper than its tags)")
    tags = doc.get("tags") if isinstance(doc, dict) else None
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        return _bad_request("tags", "must be an object of strings")
    notices.push(tags)
    return web.json_response({"tags": tags})


async def metrics(request: web.Request) -> web.Response:
    data = request.app[METRICS_KEY].render()
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def not_found(request: web.Request) -> web.Response:
    body = {"error": {"code": "NotFound", "message": f"no endpoint {request.method} {request.path}"}}
    return web.Response(text=json.dumps(body), status=404, content_type="application/json")


def build_app(
    board: HealthBoard,
    agent_metrics: AgentMetrics,
    notices: PlatformNotices | None = None,
    *,
    connection_limit: int = 1000,
) -> web.Application:
    app = web.Application(middlewares=[gate_middleware])
    app[GATE_KEY] = GateHolder()
    app[BLOCKING_KEY] = BlockingQueries(blocking_cap(connection_limit))
    app[BOARD_KEY] = board
    app[METRICS_KEY] = agent_metrics
    app[NOTICES_KEY] = notices or PlatformNotices(None)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/metadata/instance/compute/tagsList", tags_list)
    app.router.add_post("/platform/approve-os-upgrade", approve_os_upgrade)
    app.router.add_put("/platform/tags", push_tags)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


class TcpHealthPort:
    """Load-balancer probe semantics: the port accepts connections only while the verdict is Healthy.

    While not Healthy the socket is closed, so a connect is refused at once rather than left to time out.
    Opening and closing happen synchronously inside the verdict change, so the port never lags /health.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None
        self._want_open = False
        self._retry: asyncio.TimerHandle | None = None

    def _accept(self) -> None:
        if self._sock is None:
            return
        try:
            conn, _ = self._sock.accept()
            conn.close()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            pass
        except OSError as exc:  # out of file descriptors: stop accepting for a moment rather than spin
            log.warning("TCP health port %s:%d cannot accept: %s", self.host, self.port, exc)
            sock = self._sock
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock.fileno())
            loop.call_later(RETRY_SECONDS, self._resume_accepting, sock)

    def _resume_accepting(self, sock: socket.socket) -> None:
        if self._sock is sock:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    def _open(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock: socket.socket | None = None
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            # The verdict must never fail because this port cannot open (no file descriptor left, the port taken):
            # it is tried again shortly while the verdict stays Healthy.
            if sock is not None:
                sock.close()
            log.warning("TCP health port %s:%d cannot listen, retrying: %s", self.host, self.port, exc)
            if self._retry is None:
                self._retry = asyncio.get_running_loop().call_later(RETRY_SECONDS, self._open_again)
            return
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)
        self._sock = sock

    def _open_again(self) -> None:
        self._retry = None
        if self._want_open and self._sock is None:
            self._open()

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def on_verdict(self, board: HealthBoard) -> None:
        want_open = board.state is HealthState.HEALTHY and not board.closing
        self._want_open = want_open
        if want_open and self._sock is None:
            self._open()
        elif not want_open:
            self._close()

    def close(self) -> None:
        self._want_open = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._close()

    @property
    def listening(self) -> bool:
        return self._sock is not None
