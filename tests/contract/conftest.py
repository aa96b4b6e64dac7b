"""The contract suite's fixture: every test runs once on ``memory://`` and once on RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import hutch
from hutch.abc import Channel, Connection

WAIT = 5.0  # seconds: the bound on every wait for something that must happen


class Env:
    """One broker under test: connections that are closed after the test, unique names whose
    queues and exchanges are deleted after it, and waits that are always bounded."""

    def __init__(self, kind: str, url: str, prefix: str) -> None:
        self.kind = kind
        self.url = url
        self.is_memory = kind == "memory"
        self._prefix = prefix
        self._connections: list[Connection] = []
        self._queues: list[str] = []
        self._exchanges: list[str] = []
        self._channel: Channel | None = None

    def queue(self, label: str = "q") -> str:
        """A queue name unique to this test, deleted after it."""
        name = f"{self._prefix}.{label}"
        self._queues.append(name)
        return name

    def exchange(self, label: str = "x") -> str:
        """An exchange name unique to this test, deleted after it."""
        name = f"{self._prefix}.{label}"
        self._exchanges.append(name)
        return name

    async def connect(self, *, robust: bool = False) -> Connection:
        connect = hutch.connect_robust if robust else hutch.connect
        connection = await connect(self.url)
        self._connections.append(connection)
        return connection

    async def channel(self, *, publisher_confirms: bool = True) -> Channel:
        """A new channel on a new connection."""
        connection = await self.connect()
        return await connection.channel(publisher_confirms=publisher_confirms)

    async def cleanup(self) -> None:
        with contextlib.suppress(hutch.HutchError, OSError):
            connection = await hutch.connect(self.url)
            try:
                channel = await connection.channel()
                for queue in self._queues:
                    with contextlib.suppress(hutch.ChannelClosed):
                        await channel.queue_delete(queue)
                    if channel.is_closed:
                        channel = await connection.channel()
                for exchange in self._exchanges:
                    with contextlib.suppress(hutch.ChannelClosed):
                        await channel.exchange_delete(exchange)
                    if channel.is_closed:
                        channel = await connection.channel()
            finally:
                await connection.close()
        for connection in self._connections:
            with contextlib.suppress(hutch.HutchError, OSError):
                await connection.close()


@pytest.fixture(params=["memory", "rabbitmq"])
async def env(request: pytest.FixtureRequest, name: str) -> AsyncIterator[Env]:
    """The broker under test: ``memory://<unique name>`` or the suite's RabbitMQ."""
    if request.param == "memory":
        from hutch.memory import get_broker

        broker_name = f"contract-{uuid.uuid4().hex}"
        environment = Env("memory", f"memory://{broker_name}", name)
        yield environment
        await environment.cleanup()
        get_broker(broker_name).reset()
    else:
        broker = request.getfixturevalue("rabbitmq")
        environment = Env("rabbitmq", broker.url, name)
        yield environment
        await environment.cleanup()


class Inbox:
    """A consumer callback that collects deliveries, to wait on them with a bound."""

    def __init__(self, *, ack: bool = False) -> None:
        self.messages: list[hutch.IncomingMessage] = []
        self._queue: asyncio.Queue[hutch.IncomingMessage] = asyncio.Queue()
        self._ack = ack

    def __call__(self, message: hutch.IncomingMessage) -> None:
        self.messages.append(message)
        self._queue.put_nowait(message)
        if self._ack:
            message.ack()  # settles at once; a plain callback need not await it

    async def next(self, timeout: float = WAIT) -> hutch.IncomingMessage:
        """The next delivery (fails the test if none comes within ``timeout``)."""
        async with asyncio.timeout(timeout):
            return await self._queue.get()

    async def take(self, count: int, timeout: float = WAIT) -> list[hutch.IncomingMessage]:
        return [await self.next(timeout) for _ in range(count)]


class CloseWatch:
    """Started before an operation that should make the broker close ``channel``."""

    def __init__(self, channel: Channel) -> None:
        self._future: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )
        channel.add_close_listener(self._on_close)

    def _on_close(self, _channel: Any, error: BaseException | None) -> None:
        if not self._future.done():
            self._future.set_result(error)

    async def error(self, timeout: float = WAIT) -> BaseException | None:
        """The error the channel was closed with (waits, bounded, for the close)."""
        async with asyncio.timeout(timeout):
            return await self._future


async def drain(channel: Channel, queue: str) -> list[bytes]:
    """Every message left in ``queue`` (taken with ``get``, acked)."""
    bodies = []
    while (message := await channel.get(queue, no_ack=True)) is not None:
        bodies.append(message.body)
    return bodies
