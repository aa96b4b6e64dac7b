"""The embedded broker's state: exchanges, queues, bindings, routing, expiry, dead-lettering.

A ``MemoryBroker`` holds no event-loop objects of its own between operations: dispatch callbacks,
expiry timers and ``join`` waiters are made in the loop that is running when they are needed and
remember that loop, so one broker (``get_broker()``) serves a test suite that runs each test in a
fresh loop. A connection left open by a loop that has ended is dropped (its unacked deliveries
go back to their queues) when the next connection is made, or when a queue next has to deliver
to it; timers of such a loop are remade in the new one.

Messages are kept as their AMQP content header (``frames.encode_properties``) and body, and every
delivery decodes a fresh ``IncomingMessage`` from those bytes, exactly as the AMQP client does: the
consumer sees the same types RabbitMQ would hand it (``expiration`` in whole milliseconds, a
``timestamp`` truncated to seconds, headers through the AMQP table codec) and never shares a
mutable object with the publisher or with another consumer.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import itertools
import logging
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from hutch.amqp import frames
from hutch.exceptions import HutchTimeoutError
from hutch.message import PROPERTY_NAMES, IncomingMessage, Message, make_incoming

if TYPE_CHECKING:
    from hutch.abc import Channel
    from hutch.memory.channel import MemoryChannel, _Consumer
    from hutch.memory.connection import MemoryConnection

log = logging.getLogger("hutch")

__all__ = ["MemoryBroker", "get_broker"]

_monotonic = time.monotonic
_HEAD = struct.Struct(">HHQ")
_UTC = datetime.UTC

REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_PREFIX = REPLY_TO + "."
EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
SYSTEM_EXCHANGES = {
    "amq.direct": "direct",
    "amq.fanout": "fanout",
    "amq.topic": "topic",
    "amq.headers": "headers",
    "amq.match": "headers",
}
OVERFLOWS = ("drop-head", "reject-publish", "reject-publish-dlx")
# Queue arguments RabbitMQ compares when a queue is declared again (others are not compared).
EQUIVALENT_QUEUE_ARGS = (
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
)
_DISPATCH_BATCH = 512


def queue_text(name: str) -> str:
    return f"queue '{name}' in vhost '/'"


def exchange_text(name: str) -> str:
    return f"exchange '{name}' in vhost '/'"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class BrokerError(Exception):
    """A declaration the broker refuses: carries the AMQP reply code and text."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


# -- messages ---------------------------------------------------------------------------------


class Content:
    """A published message as every queue that took it shares it: immutable."""

    __slots__ = ("body", "header", "exchange", "routing_key", "priority", "expiration")

    def __init__(
        self,
        body: bytes,
        header: bytes,
        exchange: str,
        routing_key: str,
        priority: int,
        expiration: int | None,
    ) -> None:
        self.body = body
        self.header = header  # an AMQP content header payload: class, weight, size, properties
        self.exchange = exchange
        self.routing_key = routing_key
        self.priority = priority
        self.expiration = expiration  # milliseconds, as on the wire


def encode_header(message: Message) -> bytes:
    """The content header of ``message``, as the AMQP client would send it."""
    return _HEAD.pack(60, 0, len(message.body)) + frames.encode_properties(message)


def decode_into(content: Content, message: IncomingMessage) -> None:
    """Fill ``message``'s properties and body from ``content``."""
    header = content.header
    frames.decode_header(header, 0, len(header), message)
    message.body = content.body


def scratch(content: Content) -> IncomingMessage:
    """A decoded copy of ``content`` that belongs to no channel (for the broker's own use)."""
    message = make_incoming(cast("Channel", None), 0, 0, False, "", "", "", True)
    decode_into(content, message)
    return message


class Entry:
    """One message in one queue."""

    __slots__ = ("content", "seq", "expires", "redelivered", "zero_ttl")

    def __init__(self, content: Content, seq: int, expires: float | None) -> None:
        self.content = content
        self.seq = seq
        self.expires = expires  # time.monotonic() deadline
        self.redelivered = False
        self.zero_ttl = False


def _insert_in_order(ready: deque[Entry], entry: Entry) -> None:
    """Put a requeued entry back where it was: before every entry published after it."""
    if not ready or ready[0].seq > entry.seq:
        ready.appendleft(entry)
        return
    if ready[-1].seq < entry.seq:
        ready.append(entry)
        return
    low, high = 0, len(ready)
    while low < high:
        middle = (low + high) // 2
        if ready[middle].seq < entry.seq:
            low = middle + 1
        else:
            high = middle
    ready.insert(low, entry)


class _Levels:
    """The ready messages of a priority queue: one FIFO per priority, highest served first."""

    __slots__ = ("levels", "count")

    def __init__(self, max_priority: int) -> None:
        self.levels: list[deque[Entry]] = [deque() for _ in range(max_priority + 1)]
        self.count = 0

    def _level(self, entry: Entry) -> deque[Entry]:
        return self.levels[min(entry.content.priority, len(self.levels) - 1)]

    def append(self, entry: Entry) -> None:
        self._level(entry).append(entry)
        self.count += 1

    def requeue(self, entry: Entry) -> None:
        _insert_in_order(self._level(entry), entry)
        self.count += 1

    def popleft(self) -> Entry:
        for level in reversed(self.levels):
            if level:
                self.count -= 1
                return level.popleft()
        raise IndexError("pop from an empty queue")

    def __getitem__(self, index: int) -> Entry:
        if index != 0:
            raise IndexError(index)
        for level in reversed(self.levels):
            if level:
                return level[0]
        raise IndexError(index)

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self) -> Iterator[Entry]:
        for level in reversed(self.levels):
            yield from level

    def clear(self) -> None:
        for level in self.levels:
            level.clear()
        self.count = 0


# -- queues -----------------------------------------------------------------------------------


def _int_arg(queue: str, key: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "longstr" if isinstance(value, (str, bytes)) else type(value).__name__
        raise BrokerError(
            406,
            f"PRECONDITION_FAILED - invalid arg '{key}' for {queue_text(queue)}: "
            f'"expected integer, got {kind}"',
        )
    if value < minimum:
        reason = "value_zero" if value == 0 else "value_negative"
        raise BrokerError(
            406,
            f"PRECONDITION_FAILED - invalid arg '{key}' for {queue_text(queue)}: "
            f"{{{reason},{value}}}",
        )
    if maximum is not None and value > maximum:
        raise BrokerError(
            406,
            f"PRECONDITION_FAILED - invalid arg '{key}' for {queue_text(queue)}: "
            f"{{max_value_exceeded,{value}}}",
        )
    return value


def _str_arg(queue: str, key: str, value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str):
        raise BrokerError(
            406,
            f"PRECONDITION_FAILED - invalid type '{_amqp_type(value)}' for arg '{key}' in "
            f"{queue_text(queue)}",
        )
    return value


def _amqp_type(value: Any) -> str:
    """The AMQP table type RabbitMQ names in its messages (as pamqp would encode ``value``)."""
    if value is None:
        return "void"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        for name, low, high in (
            ("byte", -128, 127),
            ("short", -32768, 32767),
            ("unsignedshort", 0, 65535),
            ("signedint", -(2**31), 2**31 - 1),
            ("unsignedint", 0, 2**32 - 1),
        ):
            if low <= value <= high:
                return name
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, (str, bytes)):
        return "longstr"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def inequivalent(kind: str, name: str, key: str, received: Any, current: Any) -> BrokerError:
    """RabbitMQ's 406 for a redeclaration that differs from what exists."""
    where = queue_text(name) if kind == "queue" else exchange_text(name)
    if received is None or current is None:
        got = (
            "none"
            if received is None
            else f"the value '{received}' of type '{_amqp_type(received)}'"
        )
        now = (
            "none" if current is None else f"the value '{current}' of type '{_amqp_type(current)}'"
        )
    else:
        got, now = f"'{_show(received)}'", f"'{_show(current)}'"
    return BrokerError(
        406,
        f"PRECONDITION_FAILED - inequivalent arg '{key}' for {where}: received {got} but "
        f"current is {now}",
    )


class Queue:
    """A queue: its ready messages, its consumers, and the counts ``join`` waits on."""

    def __init__(
        self,
        broker: MemoryBroker,
        name: str,
        *,
        durable: bool = False,
        owner: MemoryConnection | None = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        reply_channel: MemoryChannel | None = None,
    ) -> None:
        self.broker = broker
        self.name = name
        self.durable = durable
        self.owner = owner
        self.auto_delete = auto_delete
        self.arguments = dict(arguments or {})
        self.reply_channel = reply_channel
        args = self.arguments
        self.ttl: int | None = None
        self.dlx: str | None = None
        self.dlrk: str | None = None
        self.max_length: int | None = None
        self.max_bytes: int | None = None
        self.overflow = "drop-head"
        max_priority: int | None = None
        if "x-message-ttl" in args:
            self.ttl = _int_arg(name, "x-message-ttl", args["x-message-ttl"], minimum=0)
        if "x-dead-letter-exchange" in args:
            self.dlx = _str_arg(name, "x-dead-letter-exchange", args["x-dead-letter-exchange"])
        if "x-dead-letter-routing-key" in args:
            self.dlrk = _str_arg(
                name, "x-dead-letter-routing-key", args["x-dead-letter-routing-key"]
            )
        if "x-max-length" in args:
            self.max_length = _int_arg(name, "x-max-length", args["x-max-length"], minimum=0)
        if "x-max-length-bytes" in args:
            self.max_bytes = _int_arg(
                name, "x-max-length-bytes", args["x-max-length-bytes"], minimum=0
            )
        if "x-overflow" in args:
            overflow = args["x-overflow"]
            if isinstance(overflow, bytes):
                overflow = overflow.decode()
            if overflow not in OVERFLOWS:
                raise BrokerError(
                    406,
                    f"PRECONDITION_FAILED - invalid arg 'x-overflow' for {queue_text(name)}: "
                    "invalid_overflow",
                )
            self.overflow = overflow
        if "x-max-priority" in args:
            max_priority = _int_arg(
                name, "x-max-priority", args["x-max-priority"], minimum=0, maximum=255
            )
        self.expires: int | None = None
        if "x-expires" in args:
            self.expires = _int_arg(name, "x-expires", args["x-expires"], minimum=1)
        self.ready: deque[Entry] | _Levels = (
            deque() if max_priority is None else _Levels(max_priority)
        )
        self.ready_bytes = 0
        self.consumers: list[_Consumer] = []
        self.exclusive_consumer = False
        self.had_consumer = False
        self.unacked = 0  # deliveries of this queue that wait for an ack
        self.busy = 0  # consumer callbacks (tasks) still running for its deliveries
        self.deleted = False
        self.bindings: set[Binding] = set()  # where this queue is the destination
        self._rr = 0
        self._seq = itertools.count()
        self._uses_ttl = self.ttl is not None
        self._dispatch_loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._unused_timer: asyncio.TimerHandle | None = None
        self._unused_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<memory queue {self.name!r} ready={len(self.ready)} unacked={self.unacked}>"

    # -- publishing into the queue -----------------------------------------------------------

    def has_room(self) -> bool:
        """Whether some consumer could take a delivery now."""
        return any(consumer.no_ack or consumer.has_room() for consumer in self.consumers)

    def enqueue(self, content: Content) -> bool:
        """Take a routed message; False if the queue refused it (full, ``reject-publish``)."""
        size = len(content.body)
        limited = self.max_length is not None or self.max_bytes is not None
        if (
            limited
            and self.overflow != "drop-head"
            and (
                (self.max_length is not None and len(self.ready) >= self.max_length)
                or (self.max_bytes is not None and self.ready_bytes + size > self.max_bytes)
            )
        ):
            if self.overflow == "reject-publish-dlx":
                self.dead_letter(content, "maxlen")
            return False
        ttl = self.ttl
        if content.expiration is not None and (ttl is None or content.expiration < ttl):
            ttl = content.expiration
        entry = Entry(content, next(self._seq), None)
        if ttl is not None:
            if ttl == 0:
                # RabbitMQ: a zero TTL lets the message through only to a consumer ready now
                if not self.has_room():
                    self.dead_letter(content, "expired")
                    return True
                entry.zero_ttl = True
            else:
                entry.expires = _monotonic() + ttl / 1000
                self._uses_ttl = True
        ready = self.ready
        ready.append(entry)
        self.ready_bytes += size
        if limited:
            self._drop_head_over_limit()
        if self._uses_ttl and ready and ready[0] is entry:
            self.arm()
        if self.consumers:
            self.kick()
        return True

    def _drop_head_over_limit(self) -> None:
        ready = self.ready
        while ready and (
            (self.max_length is not None and len(ready) > self.max_length)
            or (self.max_bytes is not None and self.ready_bytes > self.max_bytes)
        ):
            entry = ready.popleft()
            self.ready_bytes -= len(entry.content.body)
            self.dead_letter(entry.content, "maxlen")
        if self._uses_ttl:
            self.arm()

    def requeue(self, entry: Entry) -> None:
        """Put back a delivery that was not acked, where it was, marked redelivered."""
        if self.deleted:
            return
        if entry.zero_ttl:
            self.dead_letter(entry.content, "expired")
            return
        entry.redelivered = True
        ready = self.ready
        if isinstance(ready, _Levels):
            ready.requeue(entry)
        else:
            _insert_in_order(ready, entry)
        self.ready_bytes += len(entry.content.body)
        if entry.expires is not None:
            self._uses_ttl = True
        if self._uses_ttl:
            self.arm()
        if self.consumers:
            self.kick()

    # -- taking from the queue ---------------------------------------------------------------

    def take(self) -> Entry | None:
        """The head of the queue for ``basic.get``, after dropping expired messages."""
        ready = self.ready
        while ready:
            entry = ready.popleft()
            self.ready_bytes -= len(entry.content.body)
            expires = entry.expires
            if entry.zero_ttl or (expires is not None and expires <= _monotonic()):
                self.dead_letter(entry.content, "expired")
                continue
            if self._uses_ttl:
                self.arm()
            return entry
        if self._uses_ttl:
            self.arm()
        return None

    def expire_head(self) -> None:
        """Drop (or dead-letter) the expired messages at the head, as RabbitMQ does."""
        ready = self.ready
        now = _monotonic()
        while ready:
            head = ready[0]
            if head.expires is None or head.expires > now:
                break
            ready.popleft()
            self.ready_bytes -= len(head.content.body)
            self.dead_letter(head.content, "expired")

    def purge(self) -> int:
        count = len(self.ready)
        self.ready.clear()
        self.ready_bytes = 0
        self.arm()
        self.notify()
        return count

    # -- consumers ---------------------------------------------------------------------------

    def touch(self) -> None:
        """The queue was used (declared, read with ``get``, or lost its last consumer): with
        ``x-expires``, start counting its unused time from now."""
        if self.expires is None or self.deleted:
            return
        if self._unused_timer is not None:
            self._unused_timer.cancel()
            self._unused_timer = None
        if self.consumers:
            return
        loop = _running_loop()
        if loop is not None:
            self._unused_loop = loop
            self._unused_timer = loop.call_later(self.expires / 1000, self._on_unused)

    def _on_unused(self) -> None:
        self._unused_timer = None
        if not self.consumers and not self.deleted:
            self.broker.delete_queue(self)

    def add_consumer(self, consumer: _Consumer) -> None:
        if self._unused_timer is not None:
            self._unused_timer.cancel()
            self._unused_timer = None
        self.consumers.append(consumer)
        self.had_consumer = True
        if consumer.exclusive:
            self.exclusive_consumer = True
        self.kick()

    def remove_consumer(self, consumer: _Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if consumer.exclusive:
            self.exclusive_consumer = False
        if self.reply_channel is not None:
            self.broker.drop_reply_queue(self)
        elif self.auto_delete and not self.consumers and not self.deleted:
            self.broker.delete_queue(self)
        elif not self.consumers:
            self.touch()

    # -- delivering --------------------------------------------------------------------------

    def kick(self) -> None:
        """Deliver soon (in a later loop iteration, never inside the caller)."""
        if not self.ready or not self.consumers:
            return
        loop = _running_loop()
        if loop is not None and self._dispatch_loop is not loop:
            self._dispatch_loop = loop
            loop.call_soon(self._dispatch)

    def _pick(self) -> _Consumer | None:
        consumers = self.consumers
        count = len(consumers)
        if count == 1:
            consumer = consumers[0]
            return consumer if consumer.no_ack or consumer.has_room() else None
        start = self._rr
        for step in range(count):
            index = (start + step) % count
            consumer = consumers[index]
            if consumer.no_ack or consumer.has_room():
                self._rr = index + 1
                return consumer
        return None

    def _dispatch(self) -> None:
        self._dispatch_loop = None
        if self.deleted:
            return
        loop = asyncio.get_running_loop()
        ready = self.ready
        budget = _DISPATCH_BATCH
        while ready and self.consumers:
            consumer = self._pick()
            if consumer is None:
                break
            channel = consumer.channel
            if channel._loop is not loop:
                channel.connection._abandon(
                    "it belongs to another event loop (one that has ended, e.g. an earlier test)"
                )
                continue
            entry = ready.popleft()
            self.ready_bytes -= len(entry.content.body)
            expires = entry.expires
            if expires is not None and expires <= _monotonic():
                self.dead_letter(entry.content, "expired")
                continue
            channel._deliver(consumer, entry, self)
            budget -= 1
            if not budget:
                self.kick()
                break
        if self._uses_ttl:
            self.arm()
        if self._waiters:
            self.notify()

    # -- expiry ------------------------------------------------------------------------------

    def arm(self) -> None:
        """Keep one timer, for the head's expiry (RabbitMQ expires messages at the head)."""
        ready = self.ready
        at = ready[0].expires if ready else None
        timer = self._timer
        if at is None or self.deleted:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        loop = _running_loop()
        if loop is None:
            return
        if timer is not None:
            if self._timer_at == at and self._timer_loop is loop:
                return
            timer.cancel()
        self._timer_at = at
        self._timer_loop = loop
        self._timer = loop.call_later(max(0.0, at - _monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.expire_head()
        self.arm()
        if self._waiters:
            self.notify()

    # -- dead-lettering ----------------------------------------------------------------------

    def dead_letter(self, content: Content, reason: str) -> None:
        if self.dlx is not None:
            self.broker.dead_letter(self, content, reason)

    # -- join --------------------------------------------------------------------------------

    def idle(self) -> bool:
        return not self.ready and not self.unacked and not self.busy

    def notify(self) -> None:
        """Wake ``join`` waiters (they check again what they wait for)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_result(None)

    def revive(self, loop: asyncio.AbstractEventLoop) -> None:
        """Move the expiry timer and a pending dispatch off an event loop that has ended."""
        if self._timer is not None and self._timer_loop is not loop:
            timer_loop = self._timer_loop
            if timer_loop is None or timer_loop.is_closed():
                self._timer = None
                self.arm()
        unused_loop = self._unused_loop
        if (
            self._unused_timer is not None
            and unused_loop is not loop
            and (unused_loop is None or unused_loop.is_closed())
        ):
            self.touch()
        dispatch_loop = self._dispatch_loop
        if dispatch_loop is not None and dispatch_loop is not loop and dispatch_loop.is_closed():
            self._dispatch_loop = None
            self.kick()

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unused_timer is not None:
            self._unused_timer.cancel()
            self._unused_timer = None


# -- exchanges --------------------------------------------------------------------------------


class Binding:
    """A binding of a queue or exchange (``destination``) to an exchange (``source``)."""

    __slots__ = ("source", "destination", "routing_key", "arguments", "key")

    def __init__(
        self,
        source: Exchange,
        destination: Queue | Exchange,
        routing_key: str,
        arguments: dict[str, Any],
        key: tuple[Any, ...],
    ) -> None:
        self.source = source
        self.destination = destination
        self.routing_key = routing_key
        self.arguments = arguments
        self.key = key


def binding_key(
    destination: Queue | Exchange, routing_key: str, arguments: dict[str, Any]
) -> tuple[Any, ...]:
    kind = "q" if isinstance(destination, Queue) else "x"
    return (kind, destination.name, routing_key, repr(sorted(arguments.items())))


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` is zero or more; an empty key has no words."""
    words = pattern.split(".") if pattern else []
    parts = key.split(".") if key else []
    count = len(words)

    def closure(states: set[int]) -> set[int]:
        result = set(states)
        stack = list(states)
        while stack:
            index = stack.pop()
            if index < count and words[index] == "#" and index + 1 not in result:
                result.add(index + 1)
                stack.append(index + 1)
        return result

    states = closure({0})
    for part in parts:
        following: set[int] = set()
        for index in states:
            if index < count:
                word = words[index]
                if word == "#":
                    following.add(index)
                elif word == "*" or word == part:
                    following.add(index + 1)
        if not following:
            return False
        states = closure(following)
    return count in states


def _same(left: Any, right: Any) -> bool:
    return bool(left == right) and isinstance(left, bool) == isinstance(right, bool)


def headers_match(arguments: dict[str, Any], headers: dict[str, Any] | None) -> bool:
    """The headers exchange's rule: ``x-match`` all (the default), any, all-with-x, any-with-x."""
    mode = arguments.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode()
    with_x = mode.endswith("-with-x")
    headers = headers or {}
    wanted = [
        (key, value)
        for key, value in arguments.items()
        if key != "x-match" and (with_x or not key.startswith("x-"))
    ]
    if mode.startswith("any"):
        return any(
            key in headers and (value is None or _same(headers[key], value))
            for key, value in wanted
        )
    return all(
        key in headers and (value is None or _same(headers[key], value)) for key, value in wanted
    )


class Exchange:
    """An exchange and the bindings that leave it."""

    def __init__(
        self,
        name: str,
        type: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.type = type
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = dict(arguments or {})
        alternate = self.arguments.get("alternate-exchange")
        if isinstance(alternate, bytes):
            alternate = alternate.decode()
        self.alternate: str | None = alternate if isinstance(alternate, str) else None
        self.bindings: dict[tuple[Any, ...], Binding] = {}
        self.incoming: set[Binding] = set()  # where this exchange is the destination
        self.deleted = False
        self._cache: dict[str, list[Queue | Exchange]] = {}

    def changed(self) -> None:
        self._cache = {}

    def destinations(
        self, routing_key: str, headers: Callable[[], dict[str, Any] | None]
    ) -> list[Queue | Exchange]:
        kind = self.type
        if kind == "headers":
            found = headers()
            return _unique(
                b.destination for b in self.bindings.values() if headers_match(b.arguments, found)
            )
        cache = self._cache
        result = cache.get(routing_key)
        if result is not None:
            return result
        bindings = self.bindings.values()
        if kind == "direct":
            result = _unique(b.destination for b in bindings if b.routing_key == routing_key)
        elif kind == "fanout":
            result = _unique(b.destination for b in bindings)
        else:
            result = _unique(
                b.destination for b in bindings if topic_matches(b.routing_key, routing_key)
            )
        if len(cache) > 4096:
            cache.clear()
        cache[routing_key] = result
        return result


def _unique(items: Iterator[Queue | Exchange] | Any) -> list[Queue | Exchange]:
    return list(dict.fromkeys(items))


# -- the broker -------------------------------------------------------------------------------


class MemoryBroker:
    """An AMQP broker inside this process: what ``memory://NAME`` connects to.

    Get one with ``hutch.memory.get_broker(name)``. Beside serving connections, it offers
    helpers for tests:

    - ``await broker.join(queue)`` waits until ``queue`` is drained and its consumers are idle.
    - ``broker.messages(queue)`` lists what waits in a queue, without consuming it.
    - ``broker.errors`` lists the exceptions that escaped consumer callbacks (they are logged
      too); ``join`` raises the first one of its queue.
    - ``broker.reset()`` forgets everything (between tests).
    """

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self.errors: list[BaseException] = []
        self._error_queues: dict[int, str] = {}
        self._queues: dict[str, Queue] = {}
        self._exchanges: dict[str, Exchange] = {}
        self._reply_queues: dict[str, Queue] = {}
        self._connections: set[MemoryConnection] = set()
        self._declare_system_exchanges()

    def __repr__(self) -> str:
        return f"<hutch.memory.MemoryBroker {self.name!r}>"

    def _declare_system_exchanges(self) -> None:
        for name, kind in SYSTEM_EXCHANGES.items():
            self._exchanges[name] = Exchange(name, kind, durable=True)

    # -- helpers for tests -------------------------------------------------------------------

    @property
    def queues(self) -> list[str]:
        """The names of the queues that exist now, sorted."""
        return sorted(self._queues)

    def messages(self, queue: str) -> list[Message]:
        """Copies of the messages ready in ``queue``, in the order they would be delivered
        (unacked deliveries are not included). Nothing is consumed.

        Raises:
            ValueError: there is no such queue.
        """
        found = self._queue_for_helper(queue)
        result = []
        for entry in found.ready:
            props = scratch(entry.content)
            copy = Message(props.body)
            for name in PROPERTY_NAMES:
                setattr(copy, name, getattr(props, name))
            result.append(copy)
        return result

    async def join(self, queue: str, *, timeout: float = 10.0, fail_fast: bool = True) -> None:
        """Wait until ``queue`` is drained and its consumers are idle: no ready message, no
        unacked delivery, no consumer callback still running for it — and no message waiting
        to expire into it from another queue (a worker's retry queues, say).

        Args:
            queue: the queue's name.
            timeout: how long to wait, in seconds.
            fail_fast: raise the first exception that escaped a consumer callback of this queue
                (see ``errors``) as soon as there is one, instead of waiting on.

        Raises:
            ValueError: there is no such queue.
            HutchTimeoutError: the queue did not become idle within ``timeout``.
            Exception: with ``fail_fast``, the exception a consumer callback of ``queue`` raised.
        """
        found = self._queue_for_helper(queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if fail_fast:
                error = self._first_error(queue)
                if error is not None:
                    raise error
            found.expire_head()
            if found.deleted:
                return
            feeders = self._feeders(found)
            if found.idle() and not feeders:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            watched = [found, *feeders]
            for watched_queue in watched:
                watched_queue._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                waiting = "".join(
                    f"; {len(feeder.ready)} waiting to expire into it in {feeder.name!r}"
                    for feeder in feeders
                )
                raise HutchTimeoutError(
                    f"queue {queue!r} of memory broker {self.name!r} was not idle within "
                    f"{timeout:g} s: {len(found.ready)} ready, {found.unacked} unacked, "
                    f"{found.busy} callbacks running, {len(found.consumers)} consumers"
                    f"{waiting}; is a consumer running and settling its messages?"
                ) from None
            finally:
                for watched_queue in watched:
                    if waiter in watched_queue._waiters:
                        watched_queue._waiters.remove(waiter)

    def _feeders(self, target: Queue) -> list[Queue]:
        """The queues holding messages that will expire and be dead-lettered into ``target``,
        directly or through other queues (as a worker's retry queues do)."""
        feeders = []
        for queue in self._queues.values():
            if queue is target or not queue.ready or not queue._uses_ttl or queue.dlx is None:
                continue
            seen = {queue}
            frontier = [queue]
            while frontier:
                reached = self._dead_letter_targets(frontier.pop())
                if target in reached:
                    feeders.append(queue)
                    break
                for next_queue in reached - seen:
                    seen.add(next_queue)
                    frontier.append(next_queue)
        return feeders

    def _dead_letter_targets(self, queue: Queue) -> set[Queue]:
        """Where ``queue``'s dead letters would go now (for the routing keys it holds)."""
        if queue.dlx is None:
            return set()
        exchange = self._exchanges.get(queue.dlx) if queue.dlx else None
        if queue.dlx and exchange is None:
            return set()
        targets: set[Queue] = set()
        if exchange is not None and exchange.type == "headers":
            for entry in queue.ready:
                key = queue.dlrk if queue.dlrk is not None else entry.content.routing_key
                headers = scratch(entry.content).headers
                targets.update(self.route(exchange, key, functools.partial(_same_value, headers)))
            return targets
        if queue.dlrk is not None:
            keys = {queue.dlrk}
        else:
            keys = {entry.content.routing_key for entry in queue.ready}
        for key in keys:
            targets.update(self.route(exchange, key, lambda: None))
        return targets

    def _queue_for_helper(self, queue: str) -> Queue:
        found = self._queues.get(queue)
        if found is None:
            known = ", ".join(repr(name) for name in sorted(self._queues)) or "none"
            raise ValueError(
                f"memory broker {self.name!r} has no queue {queue!r} (queues: {known}); "
                "declare it (or start its consumer) first"
            )
        return found

    def _first_error(self, queue: str) -> BaseException | None:
        for error in self.errors:
            if self._error_queues.get(id(error)) == queue:
                return error
        return None

    def record_error(self, queue: Queue, error: BaseException) -> None:
        """Keep an exception that escaped a consumer callback, and log it."""
        log.error(
            "consumer callback for queue %r raised (memory broker %r)",
            queue.name,
            self.name,
            exc_info=error,
        )
        self.errors.append(error)
        self._error_queues[id(error)] = queue.name
        queue.notify()

    def reset(self) -> None:
        """Forget every queue, exchange, binding, message and recorded error; drop every
        connection (their channels are closed; no callbacks run). For test fixtures."""
        for connection in list(self._connections):
            connection._abandon("the memory broker was reset")
        for queue in [*self._queues.values(), *self._reply_queues.values()]:
            queue.deleted = True
            queue.stop_timer()
            queue.notify()
        self._queues.clear()
        self._reply_queues.clear()
        self._exchanges.clear()
        self._declare_system_exchanges()
        self.errors.clear()
        self._error_queues.clear()

    # -- connections -------------------------------------------------------------------------

    def attach(self, connection: MemoryConnection) -> None:
        loop = asyncio.get_running_loop()
        for other in list(self._connections):
            if other._loop is not loop and other._loop.is_closed():
                other._abandon("its event loop has ended (an earlier test?)")
        for queue in self._queues.values():
            queue.revive(loop)
        self._connections.add(connection)

    def detach(self, connection: MemoryConnection) -> None:
        self._connections.discard(connection)
        for queue in [q for q in self._queues.values() if q.owner is connection]:
            self.delete_queue(queue)

    # -- lookups -----------------------------------------------------------------------------

    def queue(self, name: str) -> Queue | None:
        return self._queues.get(name)

    def exchange(self, name: str) -> Exchange | None:
        return self._exchanges.get(name)

    # -- queues ------------------------------------------------------------------------------

    def add_queue(self, queue: Queue) -> None:
        self._queues[queue.name] = queue

    def delete_queue(self, queue: Queue, *, by: MemoryChannel | None = None) -> int:
        """Delete ``queue``: its messages are dropped, its consumers cancelled."""
        if queue.deleted:
            return 0
        queue.deleted = True
        if self._queues.get(queue.name) is queue:
            del self._queues[queue.name]
        count = len(queue.ready)
        queue.ready.clear()
        queue.ready_bytes = 0
        queue.stop_timer()
        for binding in list(queue.bindings):
            self.remove_binding(binding)
        for consumer in list(queue.consumers):
            consumer.channel._cancelled_by_broker(consumer, quiet=consumer.channel is by)
        queue.consumers.clear()
        queue.notify()
        return count

    def new_queue_name(self, robust: bool) -> str:
        if robust:
            # as the robust AMQP client does, so a name survives reconnects
            return f"hutch.gen-{os.urandom(12).hex()}"
        return "amq.gen-" + _b64(os.urandom(16))

    # -- direct reply-to ---------------------------------------------------------------------

    def add_reply_queue(self, channel: MemoryChannel) -> tuple[Queue, str]:
        token = _b64(os.urandom(12))
        queue = Queue(self, REPLY_TO, reply_channel=channel)
        self._reply_queues[token] = queue
        return queue, REPLY_PREFIX + token

    def drop_reply_queue(self, queue: Queue) -> None:
        for token, found in list(self._reply_queues.items()):
            if found is queue:
                del self._reply_queues[token]
        queue.deleted = True
        queue.ready.clear()

    # -- exchanges and bindings --------------------------------------------------------------

    def add_exchange(self, exchange: Exchange) -> None:
        self._exchanges[exchange.name] = exchange

    def delete_exchange(self, exchange: Exchange) -> None:
        if exchange.deleted:
            return
        exchange.deleted = True
        if self._exchanges.get(exchange.name) is exchange:
            del self._exchanges[exchange.name]
        for binding in [*exchange.bindings.values(), *exchange.incoming]:
            self.remove_binding(binding)

    def add_binding(
        self,
        source: Exchange,
        destination: Queue | Exchange,
        routing_key: str,
        arguments: dict[str, Any],
    ) -> None:
        key = binding_key(destination, routing_key, arguments)
        if key in source.bindings:
            return
        binding = Binding(source, destination, routing_key, dict(arguments), key)
        source.bindings[key] = binding
        if isinstance(destination, Queue):
            destination.bindings.add(binding)
        else:
            destination.incoming.add(binding)
        source.changed()

    def unbind(
        self,
        source: Exchange,
        destination: Queue | Exchange,
        routing_key: str,
        arguments: dict[str, Any],
    ) -> None:
        """Remove that binding, if there is one (a missing one is not an error)."""
        binding = source.bindings.get(binding_key(destination, routing_key, arguments))
        if binding is not None:
            self.remove_binding(binding)

    def remove_binding(self, binding: Binding) -> None:
        source = binding.source
        if source.bindings.pop(binding.key, None) is None:
            return
        destination = binding.destination
        if isinstance(destination, Queue):
            destination.bindings.discard(binding)
        else:
            destination.incoming.discard(binding)
        source.changed()
        if source.auto_delete and not source.bindings:
            self.delete_exchange(source)

    # -- routing -----------------------------------------------------------------------------

    def route(
        self,
        exchange: Exchange | None,
        routing_key: str,
        headers: Callable[[], dict[str, Any] | None],
    ) -> list[Queue]:
        """The queues a message published to ``exchange`` (``None``: the default exchange) with
        ``routing_key`` goes to, each once; follows exchange-to-exchange bindings and
        alternate exchanges."""
        if exchange is None:
            found = self._queues.get(routing_key)
            if found is None and routing_key.startswith(REPLY_PREFIX):
                found = self._reply_queues.get(routing_key[len(REPLY_PREFIX) :])
            return [] if found is None else [found]
        first = exchange.destinations(routing_key, headers)
        if exchange.alternate is None and all(type(d) is Queue for d in first):
            return cast("list[Queue]", first)
        queues: dict[Queue, None] = {}
        seen = {exchange.name}
        work = [(exchange, first)]
        while work:
            source, destinations = work.pop()
            if not destinations and source.alternate is not None:
                alternate = self._exchanges.get(source.alternate)
                if alternate is not None and alternate.name not in seen:
                    seen.add(alternate.name)
                    work.append((alternate, alternate.destinations(routing_key, headers)))
                continue
            for destination in destinations:
                if isinstance(destination, Queue):
                    queues[destination] = None
                elif destination.name not in seen:
                    seen.add(destination.name)
                    work.append((destination, destination.destinations(routing_key, headers)))
        return list(queues)

    # -- dead-lettering ----------------------------------------------------------------------

    def dead_letter(self, queue: Queue, content: Content, reason: str) -> None:
        """Republish ``content`` through ``queue``'s dead-letter exchange, with the ``x-death``
        headers RabbitMQ writes."""
        dlx_name = queue.dlx
        if dlx_name is None:
            return
        dlx: Exchange | None = None
        if dlx_name:
            dlx = self._exchanges.get(dlx_name)
            if dlx is None:
                log.debug(
                    "dead-letter exchange %r of queue %r does not exist; message dropped",
                    dlx_name,
                    queue.name,
                )
                return
        message = scratch(content)
        headers = dict(message.headers or {})
        death: dict[str, Any] = {
            "count": 1,
            "reason": reason,
            "queue": queue.name,
            "time": datetime.datetime.now(_UTC).replace(microsecond=0),
            "exchange": content.exchange,
            "routing-keys": [content.routing_key],
        }
        if content.expiration is not None:
            death["original-expiration"] = str(content.expiration)
        deaths = headers.get("x-death")
        if isinstance(deaths, list):
            deaths = list(deaths)
            for index, old in enumerate(deaths):
                if (
                    isinstance(old, dict)
                    and old.get("queue") == queue.name
                    and old.get("reason") == reason
                ):
                    old = dict(old)
                    old["count"] = int(old.get("count", 0)) + 1
                    del deaths[index]
                    death = old
                    break
            deaths.insert(0, death)
        else:
            deaths = [death]
        headers["x-death"] = deaths
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-first-death-queue", queue.name)
        headers.setdefault("x-first-death-exchange", content.exchange)
        message.headers = headers
        message.expiration = None
        routing_key = queue.dlrk if queue.dlrk is not None else content.routing_key
        dead = Content(
            content.body,
            encode_header(message),
            dlx_name,
            routing_key,
            content.priority,
            None,
        )
        targets = self.route(dlx, routing_key, lambda: headers)
        for target in targets:
            if reason != "rejected" and _is_cycle(target.name, deaths):
                log.debug(
                    "dead-letter cycle: message from %r not delivered to %r again",
                    queue.name,
                    target.name,
                )
                continue
            target.enqueue(dead)


def _same_value(value: dict[str, Any] | None) -> dict[str, Any] | None:
    return value


def _is_cycle(queue: str, deaths: list[Any]) -> bool:
    """RabbitMQ's rule: a message that went round to ``queue`` again with no rejection on the
    way is in a cycle (it would expire or overflow forever) and is dropped."""
    for death in deaths:
        if not isinstance(death, dict):
            return False
        if death.get("reason") == "rejected":
            return False
        if death.get("queue") == queue:
            return True
    return False


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


_brokers: dict[str, MemoryBroker] = {}


def get_broker(name: str = "default") -> MemoryBroker:
    """The in-process broker that ``memory://NAME`` connects to (``memory://`` is ``default``),
    made on first use and shared by every connection of this process."""
    if name.startswith("memory://"):
        name = parse_name(name)
    broker = _brokers.get(name)
    if broker is None:
        broker = _brokers[name] = MemoryBroker(name)
    return broker


def parse_name(url: str) -> str:
    """The broker name of a ``memory://NAME`` URL (``default`` when empty)."""
    rest = url[len("memory://") :] if url.startswith("memory://") else url
    rest = rest.split("?", 1)[0].split("#", 1)[0].strip("/")
    return rest or "default"
