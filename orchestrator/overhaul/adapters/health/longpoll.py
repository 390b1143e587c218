"""One keep-alive HTTP/1.1 connection for an agent's blocking queries: a GET, and its status, headers and body.

Thousands of watches each hold one of these and ask again every watch_wait seconds; a general HTTP client costs
several times the CPU per question (measured in bench/watch_bench.py), which is what an idle orchestrator spends.
It reads what HTTP/1.1 servers send: a Content-Length or chunked body, or one that ends with the connection.
"""

from __future__ import annotations

import asyncio

MAX_BODY = 1 << 20  # an agent's /health is a few hundred bytes
MAX_LINE = 8192


class CannotConnect(OSError):
    """Nothing accepted the connection (a booting instance, a stopped agent)."""


class Disconnected(OSError):
    """The connection ended before a whole answer came."""


class BadAnswer(ValueError):
    """What came back is not HTTP/1.x."""


class LongPollConnection:
    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, target: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
        """``GET target`` within ``timeout`` seconds: status, headers (names in lower case) and body. The
        connection is kept for the next question unless the server ends it or anything goes wrong."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await self._connected()
                writer.write(
                    f"GET {target} HTTP/1.1\r\nHost: {self.address}:{self.port}\r\nAccept: application/json\r\n\r\n"
                    .encode("latin-1")
                )  # fmt: skip
                status, headers, body, keep = await _response(reader)
        except BaseException:
            self.close()
            raise
        if not keep:
            self.close()
        return status, headers, body

    async def _connected(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing() or self._reader.at_eof():
            self.close()
            try:
                self._reader, self._writer = await asyncio.open_connection(self.address, self.port, limit=MAX_LINE)
            except OSError as exc:
                raise CannotConnect(exc.errno, exc.strerror or str(exc)) from exc
        return self._reader, self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError as exc:
        raise Disconnected("the connection ended mid-answer") from exc
    except asyncio.LimitOverrunError as exc:
        raise BadAnswer("a line of the answer is too long") from exc
    return line[:-2]


async def _exactly(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise Disconnected("the connection ended mid-answer") from exc


async def _head(reader: asyncio.StreamReader) -> list[bytes]:
    """The status line and header lines, read at once (one read for most answers)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial and not b"HTTP/1.".startswith(exc.partial[:7]):
            raise BadAnswer(f"not an HTTP/1.x status line: {exc.partial[:80]!r}") from exc
        raise Disconnected("the connection ended mid-answer") from exc
    except asyncio.LimitOverrunError as exc:
        raise BadAnswer("the answer's head is too long") from exc
    return head[:-4].split(b"\r\n")


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers, body, and whether the connection may be used again."""
    status_line, *lines = await _head(reader)
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or not code.isdigit():
        raise BadAnswer(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            raise BadAnswer(f"not a header line: {line[:80]!r}")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    keep = version == b"HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _chunked(reader)
    elif "content-length" in headers:
        length = headers["content-length"]
        if not length.isdigit() or int(length) > MAX_BODY:
            raise BadAnswer(f"Content-Length {length[:20]!r}")
        body = await _exactly(reader, int(length))
    else:  # the body is what comes until the server closes
        body, keep = await reader.read(MAX_BODY + 1), False
        if len(body) > MAX_BODY:
            raise BadAnswer("the answer is too long")
    return int(code), headers, body, keep


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_field = (await _line(reader)).split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError as exc:
            raise BadAnswer(f"not a chunk size: {size_field[:20]!r}") from exc
        if size == 0:
            while await _line(reader):  # trailers
                pass
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise BadAnswer("the answer is too long")
        body += await _exactly(reader, size)
        await _line(reader)
