"""The agent watch's own HTTP/1.1 connection (adapters/health/longpoll.py) against servers that answer as HTTP
allows: a Content-Length or chunked body, or one ended by closing; one connection kept for many questions; and what
is not an answer (nothing listening, a connection cut mid-answer, not HTTP) as a typed error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from overhaul.adapters.health.longpoll import BadAnswer, CannotConnect, Disconnected, LongPollConnection
from overhaul.localhost import free_port

Answer = Callable[[bytes], bytes]


class Server:
    """Answers each request with ``answer(request)``, counting connections; ``close_after`` ends them."""

    def __init__(self, answer: Answer, close_after: bool = False) -> None:
        self.answer, self.close_after = answer, close_after
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while request := await reader.readuntil(b"\r\n\r\n"):
                self.requests.append(request)
                writer.write(self.answer(request))
                await writer.drain()
                if self.close_after:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., asyncio.Future[tuple[Server, int]]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer, close_after: bool = False) -> tuple[Server, int]:
        server, port = Server(answer, close_after), free_port()
        servers.append(await asyncio.start_server(server.handle, "127.0.0.1", port))
        return server, port

    yield start  # type: ignore[misc]
    for s in servers:
        s.close()


def json_answer(request: bytes) -> bytes:
    body = b'{"applicationHealthState": "Healthy"}'
    return b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: "7"\r\nContent-Length: %d\r\n\r\n%s' % (
        len(body),
        body,
    )


async def test_one_connection_carries_many_questions(serve: Callable[..., asyncio.Future[tuple[Server, int]]]) -> None:
    server, port = await serve(json_answer)
    connection = LongPollConnection("127.0.0.1", port)
    for n in range(3):
        status, headers, body = await connection.get(f"/health?wait=30&etag={n}", 5)
        assert (status, headers["etag"], body) == (200, '"7"', b'{"applicationHealthState": "Healthy"}')
    connection.close()
    assert server.connections == 1
    assert server.requests[2].startswith(b"GET /health?wait=30&etag=2 HTTP/1.1\r\nHost: 127.0.0.1:")


async def test_a_chunked_body_and_one_ended_by_closing_are_read_whole(
    serve: Callable[..., asyncio.Future[tuple[Server, int]]],
) -> None:
    chunked, port = await serve(
        lambda _: (
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'4;ext=1\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n'
        )
    )
    connection = LongPollConnection("127.0.0.1", port)
    assert await connection.get("/health", 5) == (503, {"transfer-encoding": "chunked"}, b'{"a": 1}')
    assert await connection.get("/health", 5) == (503, {"transfer-encoding": "chunked"}, b'{"a": 1}')
    assert chunked.connections == 1
    closing, port = await serve(lambda _: b"HTTP/1.0 200 OK\r\n\r\n{}", close_after=True)
    connection = LongPollConnection("127.0.0.1", port)
    for _ in range(2):
        assert await connection.get("/health", 5) == (200, {}, b"{}")
    assert closing.connections == 2  # a new connection after the server ended the last


@pytest.mark.parametrize(
    ("answer", "error", "words"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}", Disconnected, "ended mid-answer"),
        (b"HTTP/1.1 200 OK\r\nContent-", Disconnected, "ended mid-answer"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", BadAnswer, "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", BadAnswer, "not a header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", BadAnswer, "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", BadAnswer, "not a chunk size"),
    ],
)
async def test_what_is_not_a_whole_answer_is_a_typed_error(
    serve: Callable[..., asyncio.Future[tuple[Server, int]]], answer: bytes, error: type[Exception], words: str
) -> None:
    _, port = await serve(lambda _: answer, close_after=True)
    connection = LongPollConnection("127.0.0.1", port)
    with pytest.raises(error, match=words):
        await connection.get("/health", 5)


async def test_nothing_listening_and_no_answer_in_time(
    serve: Callable[..., asyncio.Future[tuple[Server, int]]],
) -> None:
    with pytest.raises(CannotConnect):
        await LongPollConnection("127.0.0.1", free_port()).get("/health", 5)
    _, port = await serve(lambda _: b"HTTP/1.1 200 OK\r\n")  # then nothing more
    with pytest.raises(TimeoutError):
        await LongPollConnection("127.0.0.1", port).get("/health", 0.3)
