"""The seam between the patterns and the transports.

``Connection`` and ``Channel`` are the protocols that both hutch's AMQP client
(``hutch.amqp``) and the embedded broker (``hutch.memory``) implement. The patterns
(``hutch.patterns``) and users' code depend on these, never on one transport.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from hutch.exceptions import Unroutable
    from hutch.message import IncomingMessage, Message


class ConnectionState(enum.Enum):
    """Where a connection is in its life."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSING = "closing"
    CLOSED = "closed"


class ChannelState(enum.Enum):
    """Where a channel is in its life (``OPENING`` also while a robust connection restores it)."""

    OPENING = "opening"
    OPEN = "open"
    CLOSED = "closed"


class QueueInfo(NamedTuple):
    """What ``queue_declare`` returns: the queue's name and its counts at declaration."""

    queue: str
    message_count: int
    consumer_count: int


ConsumerCallback = Callable[["IncomingMessage"], Awaitable[None] | None]
ReturnListener = Callable[["Unroutable"], None]
CloseListener = Callable[[Any, BaseException | None], None]
ConnectionCallback = Callable[[Any], Awaitable[None] | None]
DisconnectCallback = Callable[[Any, BaseException], Awaitable[None] | None]
CloseCallback = Callable[[Any, BaseException | None], Awaitable[None] | None]


class Channel(Protocol):
    """A channel: declarations, publishing, consuming and settling deliveries."""

    number: int
    publisher_confirms: bool

    @property
    def state(self) -> ChannelState: ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def connection(self) -> Connection: ...

    async def set_qos(
        self, prefetch_count: int = 0, *, prefetch_size: int = 0, global_: bool = False
    ) -> None: ...

    async def exchange_declare(
        self,
        exchange: str,
        type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None: ...

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None: ...

    async def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None: ...

    async def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None: ...

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> QueueInfo: ...

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None: ...

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None: ...

    async def queue_purge(self, queue: str) -> int: ...

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int: ...

    async def publish(
        self,
        message: Message | bytes,
        routing_key: str = "",
        *,
        exchange: str = "",
        mandatory: bool = False,
        timeout: float | None = None,
    ) -> None: ...

    def publish_nowait(
        self,
        message: Message | bytes,
        routing_key: str = "",
        *,
        exchange: str = "",
        mandatory: bool = False,
    ) -> asyncio.Future[None]: ...

    async def consume(
        self,
        queue: str,
        callback: ConsumerCallback,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> str: ...

    async def cancel(self, consumer_tag: str) -> None: ...

    async def get(self, queue: str, *, no_ack: bool = False) -> IncomingMessage | None: ...

    async def ack(self, delivery_tag: int, *, multiple: bool = False) -> None: ...

    async def nack(
        self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None: ...

    async def reject(self, delivery_tag: int, *, requeue: bool = True) -> None: ...

    def _settle(
        self, message: IncomingMessage, kind: int, multiple: bool, requeue: bool
    ) -> None: ...

    def add_return_listener(self, listener: ReturnListener) -> None: ...

    def remove_return_listener(self, listener: ReturnListener) -> None: ...

    def add_close_listener(self, listener: CloseListener) -> None: ...

    def remove_close_listener(self, listener: CloseListener) -> None: ...

    def add_error_listener(self, listener: CloseListener) -> None: ...

    def remove_error_listener(self, listener: CloseListener) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Channel: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


class Connection(Protocol):
    """A connection to a broker (RabbitMQ, or the embedded one)."""

    robust: bool

    @property
    def url(self) -> str: ...

    @property
    def state(self) -> ConnectionState: ...

    @property
    def is_closed(self) -> bool: ...

    async def channel(
        self, *, publisher_confirms: bool = True, ack_delay: float = 0.0
    ) -> Channel: ...

    def add_reconnect_callback(self, callback: ConnectionCallback) -> None: ...

    def add_disconnect_callback(self, callback: DisconnectCallback) -> None: ...

    def add_close_callback(self, callback: CloseCallback) -> None: ...

    async def close(self, reason: str = ...) -> None: ...

    async def __aenter__(self) -> Connection: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
