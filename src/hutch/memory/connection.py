"""A connection to the embedded broker: ``hutch.connect("memory://NAME")``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hutch._listeners import ConnectionBase
from hutch.abc import ConnectionState
from hutch.exceptions import ConnectionClosed
from hutch.memory.broker import MemoryBroker, get_broker, parse_name
from hutch.memory.channel import MemoryChannel

log = logging.getLogger("hutch")

# What hutch.amqp.connect / connect_robust accept: taken, and meaningless in memory, so that a
# program can switch between amqp:// and memory:// by its URL alone.
_AMQP_OPTIONS = frozenset(
    {
        "heartbeat",
        "connection_timeout",
        "channel_max",
        "frame_max",
        "name",
        "ssl",
        "reconnect_delay",
        "reconnect_max_delay",
        "reconnect_timeout",
        "initial_connect_timeout",
    }
)
_CHANNEL_MAX = 2047


class MemoryConnection(ConnectionBase):
    """A connection to an in-process ``MemoryBroker``. It never disconnects: the reconnect and
    disconnect callbacks are kept and never called."""

    def __init__(
        self,
        broker: MemoryBroker,
        *,
        robust: bool = False,
        client_properties: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.broker = broker
        self.robust = robust
        self.client_properties = dict(client_properties or {})
        self.heartbeat = 0
        self._loop = asyncio.get_running_loop()
        self._state = ConnectionState.CONNECTED
        self._channels: dict[int, MemoryChannel] = {}
        self._orphans: set[MemoryChannel] = set()
        self._close_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<hutch.memory.MemoryConnection {self.url} {self._state.value}>"

    @property
    def url(self) -> str:
        return f"memory://{self.broker.name}"

    async def channel(
        self, *, publisher_confirms: bool = True, ack_delay: float = 0.0
    ) -> MemoryChannel:
        """Open a new channel. With ``publisher_confirms`` (the default) ``publish`` raises
        what the broker refused (unroutable mandatory messages, full queues). ``ack_delay`` is
        taken and ignored: an ack costs the embedded broker nothing, so it is settled at once."""
        self._check_ack_delay(ack_delay)
        if self._state is not ConnectionState.CONNECTED:
            raise ConnectionClosed("the connection is closed; open a new one with hutch.connect()")
        number = next((n for n in range(1, _CHANNEL_MAX + 1) if n not in self._channels), None)
        if number is None:
            raise ConnectionClosed(
                f"all {_CHANNEL_MAX} channels of this connection are in use; close some"
            )
        channel = MemoryChannel(self, number, publisher_confirms)
        self._channels[number] = channel
        return channel

    def _forget_channel(self, channel: MemoryChannel) -> None:
        if self._channels.get(channel.number) is channel:
            del self._channels[channel.number]
        if channel._tasks:
            # closed by a broker-side error: its callbacks may still run; cancel them on close
            self._orphans.add(channel)

    async def close(self, reason: str = "closed by the client") -> None:
        """Close the connection and every channel (unacked deliveries go back to their
        queues, exclusive queues are deleted). Idempotent."""
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        self._state = ConnectionState.CLOSING
        error = ConnectionClosed("the connection was closed by this program")
        channels = [*self._channels.values(), *self._orphans]
        # As on AMQP: callbacks still running are cancelled while their channel is open (an ack
        # in a ``finally`` still counts), and only then are the unacked deliveries requeued.
        for channel in channels:
            channel._stop_consuming()
        for channel in channels:
            await channel._cancel_tasks()
        for channel in channels:
            channel._shutdown(error, error)
        self._orphans.clear()
        self.broker.detach(self)
        self._state = ConnectionState.CLOSED
        for callback in list(self._close_callbacks):
            try:
                result = callback(self, None)
                if result is not None:
                    await result
            except Exception:
                log.exception("a connection close callback raised")

    def _abandon(self, why: str) -> None:
        """Drop this connection now, without running callbacks: the broker was reset, or the
        event loop it was made in is gone."""
        if self._state is ConnectionState.CLOSED:
            return
        log.warning(
            "memory broker %r: dropping a connection that was not closed: %s; close "
            "connections at the end of each test, or call get_broker(...).reset()",
            self.broker.name,
            why,
        )
        self._state = ConnectionState.CLOSED
        error = ConnectionClosed(f"the memory connection was dropped: {why}")
        channels = [*self._channels.values(), *self._orphans]
        for channel in channels:
            channel._close_listeners.clear()
            channel._shutdown(error, error)
            channel._cancel_tasks_now()
        self._orphans.clear()
        self.broker.detach(self)


async def connect_memory(
    url: str,
    *,
    robust: bool = False,
    client_properties: dict[str, Any] | None = None,
    **options: Any,
) -> MemoryConnection:
    """Connect to the in-process broker named by ``memory://NAME`` (``memory://``: the
    default one). The options of ``hutch.connect`` for AMQP are accepted and ignored."""
    if not isinstance(url, str) or not url.startswith("memory://"):
        raise ValueError(f"connect_memory() takes a memory://NAME URL, not {url!r}")
    unknown = sorted(set(options) - _AMQP_OPTIONS)
    if unknown:
        what = "connect_robust()" if robust else "connect()"
        raise TypeError(f"{what} got unexpected keyword arguments: {', '.join(unknown)}")
    broker = get_broker(parse_name(url))
    connection = MemoryConnection(broker, robust=robust, client_properties=client_properties)
    broker.attach(connection)
    return connection
