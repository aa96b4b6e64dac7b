"""Messages: what you publish (``Message``) and what the broker delivers (``IncomingMessage``).

Both carry the body and the AMQP basic properties. ``expiration`` is in seconds (the wire carries
milliseconds as text); ``timestamp`` is a timezone-aware ``datetime`` when received.
"""

from __future__ import annotations

import datetime
import enum
import logging
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any

from pamqp import decode as _pamqp_decode

from hutch.exceptions import MessageAlreadySettled

if TYPE_CHECKING:
    from hutch.abc import Channel

log = logging.getLogger("hutch")


class DeliveryMode(enum.IntEnum):
    """AMQP ``delivery_mode``: persistent messages survive a broker restart (in durable queues)."""

    TRANSIENT = 1
    PERSISTENT = 2


PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)


class Message:
    """A message to publish: a body of bytes and the AMQP basic properties.

    Args:
        body: the payload, bytes.
        headers: application headers (a dict of str to AMQP field values).
        delivery_mode: 2 (``DeliveryMode.PERSISTENT``) to survive a broker restart.
        expiration: seconds after which the broker drops (or dead-letters) the message.
        timestamp: a ``datetime`` (naive means UTC) or seconds since the epoch.
        type: the AMQP ``type`` property (``message_type`` in some other clients).
    """

    __slots__ = (
        "body",
        "content_type",
        "content_encoding",
        "_headers",
        "_raw_headers",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    )

    def __init__(
        self,
        body: bytes | bytearray | memoryview = b"",
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: dict[str, Any] | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration: float | datetime.timedelta | None = None,
        message_id: str | None = None,
        timestamp: datetime.datetime | float | None = None,
        type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
    ) -> None:
        if body.__class__ is not bytes:
            if isinstance(body, (bytearray, memoryview)):
                body = bytes(body)
            elif not isinstance(body, bytes):
                raise TypeError(
                    f"a message body must be bytes, not {body.__class__.__name__}; "
                    "encode text first (e.g. text.encode())"
                )
        self.body: bytes = body
        self.content_type = content_type
        self.content_encoding = content_encoding
        self._headers = headers
        self._raw_headers: bytes | None = None
        self.delivery_mode = delivery_mode
        self.priority = priority
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        if isinstance(expiration, datetime.timedelta):
            expiration = expiration.total_seconds()
        self.expiration = expiration
        self.message_id = message_id
        self.timestamp = timestamp
        self.type = type
        self.user_id = user_id
        self.app_id = app_id

    @property
    def headers(self) -> dict[str, Any] | None:
        """Application headers; decoded on first access for received messages."""
        if self._raw_headers is not None:
            try:
                self._headers = _pamqp_decode.field_table(self._raw_headers)[1]
            except ValueError:
                log.warning("dropping undecodable headers of a received message")
                self._headers = {}
            self._raw_headers = None
        return self._headers

    @headers.setter
    def headers(self, value: dict[str, Any] | None) -> None:
        self._headers = value
        self._raw_headers = None

    def properties(self) -> dict[str, Any]:
        """The properties that are set, as a dict (for logging and tests)."""
        values = {name: getattr(self, name) for name in PROPERTY_NAMES}
        return {name: value for name, value in values.items() if value is not None}

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 64 else self.body[:64] + b"..."
        props = ", ".join(f"{k}={v!r}" for k, v in self.properties().items())
        return f"{self.__class__.__name__}({body!r}{', ' if props else ''}{props})"


class IncomingMessage(Message):
    """A message the broker delivered (to a consumer, or through ``get``).

    Attributes:
        delivery_tag: the broker's number for this delivery on its channel.
        redelivered: the broker delivered it before and it was not acked.
        exchange, routing_key: where it was published.
        consumer_tag: the consumer it was delivered to (``""`` for ``get``).
        message_count: for ``get``, how many messages remained in the queue.
    """

    __slots__ = (
        "delivery_tag",
        "redelivered",
        "exchange",
        "routing_key",
        "consumer_tag",
        "message_count",
        "channel",
        "_epoch",
        "_settled",
    )

    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    consumer_tag: str
    message_count: int | None
    channel: Channel
    _epoch: int
    _settled: bool

    @property
    def settled(self) -> bool:
        """Whether the delivery was acked, nacked or rejected (always true with ``no_ack``)."""
        return self._settled

    def _take(self, what: str) -> None:
        if self._settled:
            raise MessageAlreadySettled(
                f"cannot {what} delivery {self.delivery_tag}: it is already settled "
                "(acked, nacked or rejected before, or consumed with no_ack=True)"
            )
        self._settled = True

    # ack/nack/reject settle at once and return an awaitable that is already done, so that
    # ``await message.ack()`` works in async callbacks and a plain ``def`` callback can call
    # ``message.ack()`` without a task or a never-awaited coroutine.

    def ack(self, *, multiple: bool = False) -> Awaitable[None]:
        """Acknowledge: the broker forgets the message (settled at once; awaiting is optional).

        Raises:
            MessageAlreadySettled: it was acked, nacked or rejected before (or ``no_ack``).
        """
        if self._settled:
            self._take("ack")  # raises
        self._settled = True
        self.channel._settle(self, 0, multiple, False)
        return _DONE

    def nack(self, *, requeue: bool = True, multiple: bool = False) -> Awaitable[None]:
        """Negative-acknowledge: requeue it, or dead-letter/drop it with ``requeue=False``."""
        self._take("nack")
        self.channel._settle(self, 1, multiple, requeue)
        return _DONE

    def reject(self, *, requeue: bool = True) -> Awaitable[None]:
        """Reject one delivery: requeue it, or dead-letter/drop it with ``requeue=False``."""
        self._take("reject")
        self.channel._settle(self, 2, False, requeue)
        return _DONE


class _Done:
    """An awaitable that is already complete (what ``ack``/``nack``/``reject`` return)."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield  # a generator that finishes at once

    def __repr__(self) -> str:
        return "<settled>"


_DONE = _Done()


def make_incoming(
    channel: Channel,
    epoch: int,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    consumer_tag: str,
    settled: bool,
) -> IncomingMessage:
    """Build an ``IncomingMessage`` with no properties set; the decoder fills them in."""
    msg = IncomingMessage.__new__(IncomingMessage)
    msg.body = b""
    msg.content_type = None
    msg.content_encoding = None
    msg._headers = None
    msg._raw_headers = None
    msg.delivery_mode = None
    msg.priority = None
    msg.correlation_id = None
    msg.reply_to = None
    msg.expiration = None
    msg.message_id = None
    msg.timestamp = None
    msg.type = None
    msg.user_id = None
    msg.app_id = None
    msg.delivery_tag = delivery_tag
    msg.redelivered = redelivered
    msg.exchange = exchange
    msg.routing_key = routing_key
    msg.consumer_tag = consumer_tag
    msg.message_count = None
    msg.channel = channel
    msg._epoch = epoch
    msg._settled = settled
    return msg
