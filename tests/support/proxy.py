"""A loopback TCP proxy between the client and RabbitMQ that breaks the network on demand.

Faults it can play, each a method:

- ``cut()``: abort every connection, both sides (the broker sees the close at once).
- ``black_hole()``: keep the sockets open but drop every byte both ways from now on; neither
  side hears a close, so only heartbeats notice. Closes are not passed on either.
- ``strand()``: close the client's side but keep the broker's side open and silent, as a
  middlebox that forgot the connection would: the client reconnects at once while the broker
  still believes the old connection alive until its heartbeat expires.
- ``refuse()`` / ``accept()``: stop and resume listening (new connections are refused).
- ``delay``: seconds every chunk of bytes waits before being passed on (order is kept).

New connections made after ``black_hole()`` or ``strand()`` are passed through normally.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from urllib.parse import urlsplit, urlunsplit


class _Direction:
    """Bytes flowing one way through a pipe, delayed if asked."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # before the destination is connected
        self.delayed: deque[tuple[float, bytes]] = deque()
        self.handle: asyncio.TimerHandle | None = None

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
            return
        delay = self.proxy.delay
        if delay <= 0 and not self.delayed:
            self.transport.write(data)
            return
        loop = asyncio.get_running_loop()
        self.delayed.append((loop.time() + delay, data))
        if self.handle is None:
            self.handle = loop.call_at(self.delayed[0][0], self._release)

    def _release(self) -> None:
        self.handle = None
        loop = asyncio.get_running_loop()
        while self.delayed and self.delayed[0][0] <= loop.time():
            _, data = self.delayed.popleft()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)
        if self.delayed:
            self.handle = loop.call_at(self.delayed[0][0], self._release)

    def attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        pending, self.pending = self.pending, []
        for data in pending:
            self.send(data)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.delayed.clear()


class _Pipe:
    """One client connection and its connection to the broker."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.to_broker = _Direction(proxy)
        self.to_client = _Direction(proxy)
        self.client: asyncio.Transport | None = None
        self.broker: asyncio.Transport | None = None
        self.dropping = False  # black-holed or stranded: pass nothing on, closes included

    def abort(self) -> None:
        for transport in (self.client, self.broker):
            if transport is not None:
                transport.abort()
        self.to_broker.stop()
        self.to_client.stop()

    def side_lost(self) -> None:
        if not self.dropping:
            self.abort()
        if (self.client is None or self.client.is_closing()) and (
            self.broker is None or self.broker.is_closing()
        ):
            self.proxy._pipes.discard(self)


class _ClientSide(asyncio.Protocol):
    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.pipe.client = transport
        self.pipe.to_client.attach(transport)
        self.pipe.proxy._connect_upstream(self.pipe)

    def data_received(self, data: bytes) -> None:
        if not self.pipe.dropping:
            self.pipe.to_broker.send(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.side_lost()


class _BrokerSide(asyncio.Protocol):
    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.pipe.broker = transport
        self.pipe.to_broker.attach(transport)

    def data_received(self, data: bytes) -> None:
        if not self.pipe.dropping:
            self.pipe.to_client.send(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.side_lost()


class Proxy:
    """Listen on a free 127.0.0.1 port and forward to ``host:port``. Use ``async with``."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, port)
        self.port = 0
        self.delay = 0.0
        self.connections = 0  # accepted so far
        self.accepted = asyncio.Event()  # set on each accepted connection
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def to(cls, url: str) -> Proxy:
        """A proxy for the broker of an ``amqp://`` URL."""
        parts = urlsplit(url)
        return cls(parts.port or 5672, parts.hostname or "127.0.0.1")

    def url(self, broker_url: str, query: str = "") -> str:
        """``broker_url`` pointed at this proxy, with ``query`` as its query string."""
        parts = urlsplit(broker_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        netloc_text = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        return urlunsplit((parts.scheme, netloc_text, parts.path or "/", query, ""))

    @property
    def live(self) -> int:
        """Connections whose client side is still open."""
        return sum(
            1 for pipe in self._pipes if pipe.client is not None and not pipe.client.is_closing()
        )

    async def __aenter__(self) -> Proxy:
        await self.accept()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def accept(self) -> None:
        """Listen (again) for clients, on the same port as before."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._client_side, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Stop listening: new connections are refused until ``accept()``."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            # Server.wait_closed() waits for accepted connections too; the listening socket
            # itself is closed by close().

    def cut(self) -> None:
        """Abort every connection on both sides."""
        for pipe in list(self._pipes):
            pipe.dropping = False
            pipe.abort()
        self._pipes.clear()

    def black_hole(self) -> None:
        """Drop every byte of the current connections, both ways, without closing anything."""
        for pipe in self._pipes:
            pipe.dropping = True
            pipe.to_broker.stop()
            pipe.to_client.stop()

    def strand(self) -> None:
        """Close the client side of every connection; leave the broker side open and silent."""
        for pipe in list(self._pipes):
            pipe.dropping = True
            pipe.to_broker.stop()
            pipe.to_client.stop()
            if pipe.client is not None:
                pipe.client.abort()

    async def close(self) -> None:
        await self.refuse()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for pipe in list(self._pipes):
            pipe.dropping = False
            pipe.abort()
        self._pipes.clear()

    def _client_side(self) -> asyncio.Protocol:
        pipe = _Pipe(self)
        self._pipes.add(pipe)
        self.connections += 1
        self.accepted.set()
        return _ClientSide(pipe)

    def _connect_upstream(self, pipe: _Pipe) -> None:
        task = asyncio.get_running_loop().create_task(
            self._upstream(pipe), name=f"proxy-upstream-{self.port}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upstream(self, pipe: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _BrokerSide(pipe), *self.target)
        except OSError:
            if pipe.client is not None:
                pipe.client.abort()
            self._pipes.discard(pipe)
            return
        if pipe.client is None or pipe.client.is_closing():
            with contextlib.suppress(Exception):
                pipe.abort()
            self._pipes.discard(pipe)
