"""A light HTTP/1.1 keep-alive client for latency benchmarks (asyncio protocols, no parsing beyond need).

The measuring instrument should cost little next to what it measures: aiohttp's client spends a few
hundred microseconds of CPU per request in the benchmark's own event loop, on the same two cores as the
worker, and that shows up as server latency. This client writes a prepared request on an idle
connection (opening another when all are busy, up to ``max_connections``) and reads the status line,
``Content-Length`` and the body. It understands only what the worker sends: no chunked bodies.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).split(b"\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self._buffer) < end + 4 + length:
            return
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((int(head[0].split(b" ")[1]), body))


class LightClient:
    """``await client.get(path, params)`` -> (status, body), on keep-alive connections to host:port."""

    def __init__(self, host: str, port: int, headers: dict[str, str], max_connections: int = 256) -> None:
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
        self._idle: list[_Connection] = []
        self._open = 0

    async def get(self, path: str, params: dict[str, str]) -> tuple[int, bytes]:
        data = f"GET {path}?{urlencode(params)} HTTP/1.1\r\n{self._head}\r\n".encode()
        conn = await self._connection()
        try:
            result = await conn.request(data)
        except BaseException:
            self._open -= 1
            if conn.transport is not None:
                conn.transport.close()
            raise
        self._idle.append(conn)
        return result

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._open -= 1
        if self._open >= self.max_connections:
            raise RuntimeError(f"more than {self.max_connections} requests in flight: the server fell behind")
        self._open += 1
        _, conn = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
        return conn

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
