"""An AMQP channel: declarations, publishing with confirms, consuming, acks.

A ``Channel`` object outlives the broker-side channel it stands for. It records what it declared
(exchanges, queues, bindings, QoS, consumers); on a robust connection, after the connection (or the
broker) dropped the channel, the same object opens a new one and replays that record, so user code
and the patterns keep their references. On a plain connection a dropped channel stays closed.

Publishing, delivery and acks are the hot path: they go through ``frames``' hand-written codec and
the link's coalesced writes, with one future per confirmed publish and no task per delivery
unless the consumer callback is a coroutine function.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import os
import time
import types
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

from pamqp import commands as spec

from hutch._eager import EAGER_TASKS_ARE_CHEAP, start_task
from hutch._listeners import ChannelBase
from hutch.abc import ChannelState, ConsumerCallback, QueueInfo
from hutch.amqp import frames
from hutch.exceptions import (
    AccessRefused,
    ConnectionClosed,
    ConnectionLost,
    HutchConnectionError,
    HutchError,
    HutchTimeoutError,
    ProtocolError,
    PublishNacked,
    ResourceLocked,
    Unroutable,
    channel_error,
)
from hutch.message import _DONE, IncomingMessage, Message, make_incoming

if TYPE_CHECKING:
    from hutch.amqp.connection import Connection
    from hutch.amqp.link import Link

log = logging.getLogger("hutch")


_encode_content = frames.encode_content
_DELIVER, _GET, _RETURN = 1, 2, 3
_tag_counter = itertools.count(1)
_TAG_PREFIX = f"hutch.{os.getpid()}.{os.urandom(3).hex()}"


_CoroutineType = types.CoroutineType


def _as_message(message: object, what: str) -> Message:
    if isinstance(message, Message):
        return message
    if isinstance(message, (bytes, bytearray, memoryview)):
        return Message(bytes(message))
    raise TypeError(f"{what}() takes a hutch.Message or bytes, not {message.__class__.__name__}")


def _binding_key(
    kind: str, destination: str, source: str, routing_key: str, arguments: dict[str, Any] | None
) -> tuple[str, str, str, str, str]:
    """How the topology record keys a binding: kind ``"q"`` (a queue bound to an exchange) or
    ``"x"`` (an exchange bound to an exchange), then destination, source, routing key and
    arguments (the deletes below match on the first three)."""
    return (kind, destination, source, routing_key, repr(arguments))


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class _Consumer:
    __slots__ = ("method", "callback")

    def __init__(self, method: spec.Basic.Consume, callback: ConsumerCallback) -> None:
        self.method = method
        self.callback = callback


def _method_name(class_id: int | None, method_id: int | None) -> str:
    if not class_id:
        return ""
    cls = spec.INDEX_MAPPING.get((class_id << 16) | (method_id or 0))
    return str(getattr(cls, "name", f"{class_id}.{method_id}"))


class Channel(ChannelBase):
    """A channel on an AMQP ``Connection``; get one with ``await connection.channel()``."""

    def __init__(
        self,
        connection: Connection,
        number: int,
        publisher_confirms: bool,
        ack_delay: float = 0.0,
    ) -> None:
        super().__init__()
        self._connection = connection
        self._loop = asyncio.get_running_loop()
        self.number = number
        self.publisher_confirms = publisher_confirms
        self.ack_delay = ack_delay
        self._state = ChannelState.OPENING
        self._link: Link | None = None
        self._epoch = 0
        self._opened = asyncio.Event()
        self._closed_error: HutchError | None = None
        self._reopen_task: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        # synchronous methods in flight, answered in order: (future, expected names, extra)
        self._waiters: deque[tuple[asyncio.Future[Any], tuple[str, ...], Any]] = deque()
        # publisher confirms
        self._seq = 0
        self._floor = 0
        self._unconfirmed: dict[int, asyncio.Future[None]] = {}
        self._mandatory: dict[int, tuple[str, str, bytes]] = {}
        self._returned: dict[int, Unroutable] = {}
        # content being assembled
        self._content_kind = 0
        self._content_msg: IncomingMessage | None = None
        self._content_target: Any = None
        self._body_left = 0
        self._body_parts: list[bytes] = []
        # what to replay after a reconnect
        self._qos: spec.Basic.Qos | None = None
        self._exchanges: dict[str, spec.Exchange.Declare] = {}
        self._queues: dict[str, spec.Queue.Declare] = {}
        self._bindings: dict[tuple[str, ...], spec.Queue.Bind | spec.Exchange.Bind] = {}
        self._consumers: dict[str, _Consumer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._publish_frames: dict[tuple[str, str, bool], bytes] = {}
        # consumer acks, coalesced (see _settle)
        self._ack_epoch = 0
        self._ack_floor = 0
        self._ack_pending = 0
        self._ack_held = 0  # how many deliveries the held ack covers
        self._ack_ahead: set[int] | None = set()

    def __repr__(self) -> str:
        return f"<hutch.Channel {self.number} {self._state.value}>"

    # -- state ------------------------------------------------------------------------------

    @property
    def connection(self) -> Connection:
        return self._connection

    # -- opening, losing, restoring ---------------------------------------------------------

    def _call_on(self, link: Link, method: frames.Method, extra: Any = None) -> asyncio.Future[Any]:
        """Send a synchronous method on ``link``; the future gets the broker's answer.

        On a link that is already gone the future fails at once: the loss was announced before
        this call, so nothing else would ever answer it.
        """
        future: asyncio.Future[Any] = self._loop.create_future()
        if not link.is_open:
            future.set_exception(link.error or ConnectionLost("the connection is not open"))
            return future
        self._waiters.append((future, tuple(method.valid_responses), extra))
        link.write(frames.encode_method(self.number, method))
        return future

    async def _call_all(self, link: Link, methods: list[frames.Method]) -> None:
        """Send ``methods`` back to back and wait for every answer; raise the first error."""
        futures = [self._call_on(link, method) for method in methods]
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _open_steps(self) -> list[frames.Method]:
        steps: list[frames.Method] = [spec.Channel.Open()]
        if self.publisher_confirms:
            steps.append(spec.Confirm.Select())
        return steps

    def _begin(self, link: Link) -> None:
        """Start a new broker-side life of this channel on ``link`` (a new delivery epoch)."""
        if not link.is_open:
            raise link.error or ConnectionLost("the connection is not open")
        self._link = link
        self._epoch += 1
        self._seq = 0
        self._floor = 0
        self._content_msg = None

    async def _open_on(self, link: Link) -> None:
        """Open the broker-side channel on ``link`` (QoS, confirms and topology not included)."""
        self._begin(link)
        await self._call_all(link, self._open_steps())

    async def _open(self, link: Link) -> None:
        await self._open_on(link)
        self._set_open()

    def _set_open(self) -> None:
        self._state = ChannelState.OPEN
        self._opened.set()

    def _restore_steps(self) -> list[frames.Method]:
        """What to replay, in order: open, confirm mode, QoS, exchanges, queues, bindings,
        consumers."""
        steps = self._open_steps()
        if self._qos is not None:
            steps.append(self._qos)
        steps += self._exchanges.values()
        steps += self._queues.values()
        steps += self._bindings.values()
        steps += (consumer.method for consumer in self._consumers.values())
        return steps

    def _raise_if_closed(self) -> None:
        if self._state is ChannelState.CLOSED:
            raise self._closed_error or ConnectionClosed(f"channel {self.number} was closed")

    async def _restore(self, link: Link, locked_until: float) -> None:
        """Open on ``link`` and replay QoS, exchanges, queues, bindings and consumers.

        The steps go out back to back and are answered in order, so a restore costs one round
        trip. A queue or consumer refused as locked (the broker has not yet noticed that the
        old connection, which held it exclusively, is dead) is retried until ``locked_until``.
        Raises ``ConnectionClosed`` if the channel is closed meanwhile.
        """
        delay = 0.1
        while True:
            self._raise_if_closed()
            self._begin(link)
            try:
                await self._call_all(link, self._restore_steps())
            except (ResourceLocked, AccessRefused) as exc:
                self._raise_if_closed()
                if time.monotonic() + delay > locked_until or not link.is_open:
                    raise
                log.info(
                    "restoring channel %d: %s; retrying in %.1f s (the broker may not yet know "
                    "that the previous connection is gone)",
                    self.number,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self._raise_if_closed()
            if self._link is not link:
                raise link.error or ConnectionLost("the connection was lost while restoring")
            self._set_open()
            return

    def _on_link_lost(self, error: HutchError) -> None:
        """The connection under this channel went away."""
        self._link = None
        if self._reopen_task is not None:
            # The connection's reconnect restores this channel instead.
            self._reopen_task.cancel()
            self._reopen_task = None
        self._fail_inflight(error)
        if self._closed_error is not None or self._state is ChannelState.CLOSED:
            return
        if self._connection.robust and not isinstance(error, ConnectionClosed):
            self._state = ChannelState.OPENING
            self._opened.clear()
        else:
            self._finish(error)

    def _fail_inflight(self, error: BaseException) -> None:
        waiters, self._waiters = self._waiters, deque()
        for future, _names, _extra in waiters:
            if not future.done():
                future.set_exception(error)
        unconfirmed, self._unconfirmed = self._unconfirmed, {}
        for future in unconfirmed.values():
            if not future.done():
                future.set_exception(error)
        self._mandatory.clear()
        self._returned.clear()
        self._content_msg = None
        self._content_target = None
        self._body_parts = []

    def _finish(self, error: HutchError | None) -> None:
        """Mark the channel closed for good and tell the listeners."""
        if self._closed_error is not None:
            return
        self._state = ChannelState.CLOSED
        self._closed_error = error or ConnectionClosed(f"channel {self.number} was closed")
        self._opened.set()  # wake anyone waiting for a reopen; they will see the error
        self._connection._forget_channel(self)
        self._notify_closed(error)

    def _on_broker_close(self, method: spec.Channel.Close) -> None:
        link = self._link
        if link is not None:
            link.write(frames.encode_method(self.number, spec.Channel.CloseOk()))
        error = channel_error(
            method.reply_code or 0,
            method.reply_text,
            _method_name(method.class_id, method.method_id),
        )
        restoring = self._state is ChannelState.OPENING and self._connection.robust
        log.log(
            logging.INFO if restoring else logging.WARNING, "channel %d: %s", self.number, error
        )
        self._link = None
        self._fail_inflight(error)
        if self._closed_error is not None or self._state is ChannelState.CLOSED:
            return
        self._notify_error(error)
        robust = self._connection.robust
        if robust and self._state is ChannelState.OPEN and link is not None:
            self._state = ChannelState.OPENING
            self._opened.clear()
            self._reopen_task = self._connection._spawn(self._reopen(link), "reopen-channel")
        elif not robust or self._state is not ChannelState.OPENING:
            # (A robust channel being opened or restored sees the error where it waits.)
            self._finish(error)

    async def _reopen(self, link: Link) -> None:
        """Reopen after the broker closed the channel (robust connections only)."""
        try:
            await self._restore(link, time.monotonic() + 5)
        except HutchConnectionError:
            pass  # lost with its connection (whose reconnect restores it), or closed by the user
        except HutchError as exc:
            log.error("channel %d could not be reopened: %s", self.number, exc)
            self._fail_inflight(exc)
            self._finish(exc)
        finally:
            if self._reopen_task is asyncio.current_task():
                self._reopen_task = None

    async def _ready(self) -> Link:
        """The link to write to once the channel is open, waiting (bounded) for a reconnect."""
        if self._state is ChannelState.OPEN and self._link is not None:
            return self._link
        if self._state is ChannelState.OPENING:
            bound = self._connection.reconnect_timeout
            try:
                async with asyncio.timeout(bound):
                    while self._state is ChannelState.OPENING:
                        await self._opened.wait()
            except TimeoutError:
                raise ConnectionLost(
                    f"channel {self.number} was not restored within {bound:g} s (the broker is "
                    "unreachable or refuses it); try again later, or raise reconnect_timeout"
                ) from None
        if self._state is ChannelState.OPEN and self._link is not None:
            return self._link
        raise self._closed_error or ConnectionClosed(f"channel {self.number} is closed")

    async def _rpc(self, method: frames.Method, extra: Any = None) -> Any:
        link = self._link if self._state is ChannelState.OPEN else None
        if link is None:
            link = await self._ready()
        return await self._call_on(link, method, extra)

    # -- frames from the broker -------------------------------------------------------------

    def _on_method(self, method: frames.Method) -> None:
        name = method.name
        waiters = self._waiters
        if waiters and name in waiters[0][1]:
            future, _names, extra = waiters.popleft()
            if name == "Basic.GetOk":
                assert isinstance(method, spec.Basic.GetOk)
                self._start_content(
                    _GET,
                    method.delivery_tag or 0,
                    method.redelivered,
                    method.exchange,
                    method.routing_key or "",
                    "",
                    (future, method.message_count),
                    settled=bool(extra),
                )
            elif not future.done():
                future.set_result(None if name == "Basic.GetEmpty" else method)
            return
        if isinstance(method, spec.Basic.Return):
            self._start_content(
                _RETURN,
                0,
                False,
                method.exchange,
                method.routing_key or "",
                "",
                (method.reply_code or 0, method.reply_text),
                settled=True,
            )
        elif isinstance(method, spec.Basic.Nack):
            self._on_confirm(method.delivery_tag or 0, 1 if method.multiple else 0, True)
        elif isinstance(method, spec.Basic.Ack):
            self._on_confirm(method.delivery_tag or 0, 1 if method.multiple else 0, False)
        elif isinstance(method, spec.Channel.Close):
            self._on_broker_close(method)
        elif isinstance(method, spec.Basic.Cancel):
            tag = method.consumer_tag or ""
            if self._consumers.pop(tag, None) is not None:
                log.warning(
                    "the broker cancelled consumer %s on channel %d (its queue was deleted or "
                    "its node went down)",
                    tag,
                    self.number,
                )
        elif isinstance(method, spec.Channel.Flow):
            if self._link is not None:
                reply = spec.Channel.FlowOk(active=method.active)
                self._link.write(frames.encode_method(self.number, reply))
        else:
            raise ProtocolError(
                f"the broker sent {name} on channel {self.number}, which nothing asked for"
            )

    def _start_content(
        self,
        kind: int,
        delivery_tag: int,
        redelivered: bool,
        exchange: str,
        routing_key: str,
        consumer_tag: str,
        target: Any,
        *,
        settled: bool,
    ) -> None:
        self._content_kind = kind
        self._content_target = target
        if settled and delivery_tag:
            self._note_settled(delivery_tag)  # basic.get with no_ack
        self._content_msg = make_incoming(
            self,
            self._epoch,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            consumer_tag,
            settled,
        )

    def _on_deliver(
        self,
        consumer_tag: str,
        delivery_tag: int,
        redelivered: bool,
        exchange: str,
        routing_key: str,
    ) -> None:
        consumer = self._consumers.get(consumer_tag)
        no_ack = consumer.method.no_ack if consumer is not None else False
        if no_ack:
            self._note_settled(delivery_tag)
        self._content_kind = _DELIVER
        self._content_target = consumer
        self._content_msg = make_incoming(
            self,
            self._epoch,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            consumer_tag,
            no_ack,
        )

    def _on_header(self, data: bytes, start: int, end: int) -> None:
        message = self._content_msg
        if message is None:
            raise ProtocolError(
                f"the broker sent a content header on channel {self.number} "
                "without a method announcing it"
            )
        size = frames.decode_header(data, start, end, message)
        if size:
            self._body_left = size
            self._body_parts = []
        else:
            self._content_done(message)

    def _on_body(self, chunk: bytes) -> None:
        message = self._content_msg
        if message is None:
            raise ProtocolError(
                f"the broker sent a body frame on channel {self.number} without a content header"
            )
        left = self._body_left - len(chunk)
        if left < 0:
            raise ProtocolError("the broker sent a longer message body than it announced")
        self._body_left = left
        parts = self._body_parts
        if left == 0 and not parts:
            message.body = chunk
        else:
            parts.append(chunk)
            if left:
                return
            message.body = b"".join(parts)
            self._body_parts = []
        self._content_done(message)

    def _on_delivery(
        self,
        fields: tuple[str, int, bool, str, str],
        data: bytes,
        start: int,
        end: int,
        body: bytes,
    ) -> None:
        """A whole delivery in one call: ``basic.deliver`` (its decoded ``fields``), its
        content header (``data[start:end]``) and its body, when they arrived in one read (the
        usual case)."""
        consumer_tag, delivery_tag, redelivered, exchange, routing_key = fields
        consumer = self._consumers.get(consumer_tag)
        no_ack = consumer.method.no_ack if consumer is not None else False
        if no_ack:
            self._note_settled(delivery_tag)
        message = make_incoming(
            self,
            self._epoch,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            consumer_tag,
            no_ack,
        )
        frames.decode_header(data, start, end, message)
        message.body = body
        self._content_msg = None
        self._dispatch(message, consumer)

    def _content_done(self, message: IncomingMessage) -> None:
        self._content_msg = None
        kind = self._content_kind
        target = self._content_target
        self._content_target = None
        if kind == _DELIVER:
            self._dispatch(message, target)
        elif kind == _GET:
            future, count = target
            message.message_count = count
            if not future.done():
                future.set_result(message)
            elif not message._settled:
                # get() was cancelled meanwhile: hand the message back rather than hold it
                # unacked until the channel closes.
                message.nack(requeue=True)
        else:
            self._on_return(message, *target)

    def _dispatch(self, message: IncomingMessage, consumer: _Consumer | None) -> None:
        """Hand a delivery to its consumer's callback."""
        if consumer is None:
            # A delivery to a consumer we cancelled: hand it back to the queue.
            if not message._settled and self._link is not None:
                message._settled = True
                self._link.write(frames.encode_nack(self.number, message.delivery_tag, False, True))
                self._note_settled(message.delivery_tag)
            return
        try:
            result = consumer.callback(message)
        except Exception:
            log.exception("consumer callback for queue %r raised", consumer.method.queue)
            return
        if result is not None:
            self._run_callback(result)

    def _run_callback(self, result: Any) -> None:
        """Run what a consumer callback returned: a coroutine becomes a task the channel owns
        until it ends; an awaitable that is already done (``message.ack()``) is dropped."""
        if result.__class__ is not _CoroutineType:
            if result is _DONE or not inspect.isawaitable(result):
                return
            result = _await(result)
        # On Python 3.11 an eager task is asyncio's Python one, about 1 µs more per delivery:
        # it starts eagerly only for a delivery that came alone in its read (a call to a
        # callee, a task awaited one by one), whose reply and ack then leave with the read's
        # write. Deliveries that share a read share the next loop turn anyway, and one started
        # ahead of the others would ack out of order (an ack of its own instead of joining the
        # coalesced one). Nor does a delivery alone in a read that follows a full one (uvloop
        # and asyncio's TLS read again at once then, before the full read's tasks started). A
        # lone delivery the link did not parse in one piece (a heartbeat in the same read,
        # content split across reads) starts on the next turn: that costs a turn, not an order.
        link = self._link
        eager = EAGER_TASKS_ARE_CHEAP or (link is not None and link.eager_task_free)
        task = start_task(self._loop, self._guard(result), eager=eager)
        if task is not None:
            self._tasks.add(task)

    async def _guard(self, coro: Coroutine[Any, Any, Any]) -> None:
        # One coroutine frame instead of a done callback: no extra loop callback per delivery.
        try:
            await coro
        except Exception:
            log.exception("consumer callback raised")
        finally:
            self._tasks.discard(asyncio.current_task())

    def _on_return(self, message: IncomingMessage, reply_code: int, reply_text: str) -> None:
        error = Unroutable(message.exchange, message.routing_key, reply_code, reply_text, message)
        for tag, (exchange, routing_key, body) in self._mandatory.items():
            if (
                tag not in self._returned
                and routing_key == message.routing_key
                and exchange == message.exchange
                and body == message.body
            ):
                self._returned[tag] = error
                break
        else:
            if not self._return_listeners:
                log.warning("%s", error)
        self._notify_returned(error)

    def _on_confirm(self, tag: int, bits: int, nack: bool) -> None:
        unconfirmed = self._unconfirmed
        if bits & 1:
            # One pass over every tag the confirm covers; plain acks of unreturned messages
            # (nearly all of them) are resolved inline.
            pop = unconfirmed.pop
            special = nack or self._mandatory
            for number in range(self._floor + 1, tag + 1):
                future = pop(number, None)
                if future is None:
                    continue
                if special:
                    self._resolve(number, future, nack)
                elif not future.done():
                    future.set_result(None)
            if tag > self._floor:
                self._floor = tag
        else:
            future = unconfirmed.pop(tag, None)
            if future is not None:
                self._resolve(tag, future, nack)
        floor = self._floor
        seq = self._seq
        while floor < seq and (floor + 1) not in unconfirmed:
            floor += 1
        self._floor = floor

    def _resolve(self, tag: int, future: asyncio.Future[None], nack: bool) -> None:
        error: HutchError | None = None
        if self._mandatory and self._mandatory.pop(tag, None) is not None:
            error = self._returned.pop(tag, None)
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        elif nack:
            future.set_exception(
                PublishNacked(
                    f"the broker nacked message {tag} on channel {self.number}: it did "
                    "not store it (queue full with reject-publish, or an internal "
                    "error); publish it again"
                )
            )
        else:
            future.set_result(None)

    # -- declarations -----------------------------------------------------------------------

    async def set_qos(
        self, prefetch_count: int = 0, *, prefetch_size: int = 0, global_: bool = False
    ) -> None:
        """Limit unacked deliveries per consumer (``global_=True``: per channel)."""
        method = spec.Basic.Qos(
            prefetch_size=prefetch_size, prefetch_count=prefetch_count, global_=global_
        )
        await self._rpc(method)
        self._qos = method

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
    ) -> None:
        """Declare an exchange (``passive=True``: only check that it exists)."""
        method = spec.Exchange.Declare(
            exchange=exchange,
            exchange_type=type,
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        )
        await self._rpc(method)
        if not passive:
            self._exchanges[exchange] = method

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        """Delete an exchange."""
        await self._rpc(spec.Exchange.Delete(exchange=exchange, if_unused=if_unused))
        self._exchanges.pop(exchange, None)
        for key in [
            k for k in self._bindings if k[2] == exchange or (k[0] == "x" and k[1] == exchange)
        ]:
            del self._bindings[key]

    async def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Bind exchange ``destination`` to ``source``."""
        method = spec.Exchange.Bind(
            destination=destination, source=source, routing_key=routing_key, arguments=arguments
        )
        await self._rpc(method)
        self._bindings[_binding_key("x", destination, source, routing_key, arguments)] = method

    async def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Remove a binding between two exchanges."""
        method = spec.Exchange.Unbind(
            destination=destination, source=source, routing_key=routing_key, arguments=arguments
        )
        await self._rpc(method)
        self._bindings.pop(_binding_key("x", destination, source, routing_key, arguments), None)

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> QueueInfo:
        """Declare a queue and return its name and counts.

        With ``queue=""`` the broker names the queue; on a robust connection hutch names it
        instead (``hutch.gen-...``) so that it keeps its name across reconnects.
        """
        if not queue and not passive and self._connection.robust:
            queue = f"hutch.gen-{os.urandom(12).hex()}"
        method = spec.Queue.Declare(
            queue=queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        ok = await self._rpc(method)
        name = ok.queue
        if not passive:
            method.queue = name
            self._queues[name] = method
        return QueueInfo(name, ok.message_count or 0, ok.consumer_count or 0)

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Bind ``queue`` to ``exchange``."""
        method = spec.Queue.Bind(
            queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments
        )
        await self._rpc(method)
        self._bindings[_binding_key("q", queue, exchange, routing_key, arguments)] = method

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Remove a binding of ``queue`` to ``exchange``."""
        method = spec.Queue.Unbind(
            queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments
        )
        await self._rpc(method)
        self._bindings.pop(_binding_key("q", queue, exchange, routing_key, arguments), None)

    async def queue_purge(self, queue: str) -> int:
        """Remove every ready message from ``queue``; return how many."""
        ok = await self._rpc(spec.Queue.Purge(queue=queue))
        return int(ok.message_count or 0)

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete ``queue``; return how many messages it held."""
        ok = await self._rpc(spec.Queue.Delete(queue=queue, if_unused=if_unused, if_empty=if_empty))
        self._forget_queue(queue)
        return int(ok.message_count or 0)

    def _forget_queue(self, queue: str) -> None:
        self._queues.pop(queue, None)
        for key in [k for k in self._bindings if k[0] == "q" and k[1] == queue]:
            del self._bindings[key]
        for tag in [t for t, c in self._consumers.items() if c.method.queue == queue]:
            del self._consumers[tag]

    # -- publishing -------------------------------------------------------------------------

    def _method_frame(self, exchange: str, routing_key: str, mandatory: bool) -> bytes:
        """The encoded ``basic.publish`` frame for a destination, cached: most programs publish
        to a handful of them."""
        key = (exchange, routing_key, mandatory)
        frame = self._publish_frames.get(key)
        if frame is None:
            frame = frames.encode_publish_method(
                self.number,
                frames.shortstr(exchange, "exchange name"),
                frames.shortstr(routing_key, "routing key"),
                mandatory,
            )
            if len(self._publish_frames) >= 4096:
                self._publish_frames.clear()
            self._publish_frames[key] = frame
        return frame

    async def publish(
        self,
        message: Message | bytes,
        routing_key: str = "",
        *,
        exchange: str = "",
        mandatory: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Publish ``message``; with publisher confirms (the default), return once the broker
        has taken responsibility for it.

        Raises:
            Unroutable: ``mandatory=True`` and no queue took the message.
            PublishNacked: the broker refused the message.
            ConnectionLost: the connection went away before the confirm came; the broker may or
                may not have the message, so publish it again (delivery is at least once).
            HutchTimeoutError: no confirm within ``timeout`` seconds.
        """
        if message.__class__ is not Message:
            message = _as_message(message, "publish")
        link = self._link
        # ``timeout`` bounds the whole call: waiting to be able to write, then the confirm.
        deadline = None if timeout is None else self._loop.time() + timeout
        if link is None or not link.writable or self._state is not ChannelState.OPEN:
            link = await self._ready()
            while not link.writable:
                await self._wait_writable(link, self._remaining(deadline))
                # The broker may have closed the channel meanwhile: never write on it then.
                link = await self._ready()
        data = _encode_content(
            self._method_frame(exchange, routing_key, mandatory),
            self.number,
            message,
            self._connection._frame_max,
        )
        if not self.publisher_confirms:
            link.write(data)
            return
        self._seq += 1
        tag = self._seq
        future: asyncio.Future[None] = self._loop.create_future()
        self._unconfirmed[tag] = future
        if mandatory:
            self._mandatory[tag] = (exchange, routing_key, message.body)
        link.write(data)
        if deadline is None:
            await future
            return
        try:
            async with asyncio.timeout(self._remaining(deadline)):
                await future
        except TimeoutError:
            raise HutchTimeoutError(
                f"the broker did not confirm the message within {timeout:g} s; it may still "
                "arrive, so publish again only if duplicates are acceptable"
            ) from None

    def _remaining(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - self._loop.time())

    def publish_nowait(
        self,
        message: Message | bytes,
        routing_key: str = "",
        *,
        exchange: str = "",
        mandatory: bool = False,
    ) -> asyncio.Future[None]:
        """Publish without waiting: return a future that resolves when the broker confirms (at
        once without publisher confirms) or fails as ``publish`` would raise.

        The bytes are written in this call when the channel is open and writable; otherwise
        (reconnecting, blocked) the publish happens as soon as it can, as ``publish`` would.
        """
        if message.__class__ is not Message:
            message = _as_message(message, "publish_nowait")
        link = self._link
        if link is None or not link.writable or self._state is not ChannelState.OPEN:
            return asyncio.ensure_future(
                self.publish(message, routing_key, exchange=exchange, mandatory=mandatory)
            )
        data = _encode_content(
            self._method_frame(exchange, routing_key, mandatory),
            self.number,
            message,
            self._connection._frame_max,
        )
        future: asyncio.Future[None] = self._loop.create_future()
        if not self.publisher_confirms:
            link.write(data)
            future.set_result(None)
            return future
        self._seq += 1
        tag = self._seq
        self._unconfirmed[tag] = future
        if mandatory:
            self._mandatory[tag] = (exchange, routing_key, message.body)
        link.write(data)
        return future

    async def _wait_writable(self, link: Link, timeout: float | None) -> None:
        if link.blocked is not None:
            log.info("publishing waits: the broker blocked the connection (%s)", link.blocked)
        try:
            async with asyncio.timeout(timeout):
                await link.wait_writable()
        except TimeoutError:
            why = (
                f"the broker blocked this connection ({link.blocked}): it is low on memory or disk"
                if link.blocked is not None
                else "the connection's send buffer stayed full (the broker reads too slowly)"
            )
            raise HutchTimeoutError(f"could not publish before the timeout: {why}") from None

    # -- consuming --------------------------------------------------------------------------

    async def consume(
        self,
        queue: str,
        callback: ConsumerCallback,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> str:
        """Start delivering messages of ``queue`` to ``callback``; return the consumer tag.

        ``callback(message)`` is called for each delivery, in order. If it returns an awaitable
        (an ``async def`` callback), that runs as a task of its own, so deliveries do not wait
        for each other; bound them with ``set_qos``. The task starts eagerly (it runs at once,
        up to its first wait) on Python 3.12+, and on 3.11 for a delivery that came alone in
        its read; there that task is asyncio's Python implementation of a task, for which
        ``isinstance(task, asyncio.Task)`` is false (see ``hutch._eager``). Settle each message
        with ``await message.ack()`` (or ``nack``/``reject``) unless ``no_ack=True``.
        """
        tag = consumer_tag or f"{_TAG_PREFIX}.{next(_tag_counter)}"
        if tag in self._consumers:
            raise ValueError(f"consumer tag {tag!r} is already in use on this channel")
        method = spec.Basic.Consume(
            queue=queue, consumer_tag=tag, no_ack=no_ack, exclusive=exclusive, arguments=arguments
        )
        # Recorded only once the channel is open: a restore in progress would otherwise replay
        # this consume and the broker would refuse the second one (reused consumer tag).
        link = await self._ready()
        if tag in self._consumers:
            raise ValueError(f"consumer tag {tag!r} is already in use on this channel")
        self._consumers[tag] = _Consumer(method, callback)
        future = self._call_on(link, method)
        try:
            await future
        except BaseException:
            if future.cancelled():
                # Cancelled with the consume on its way: the broker starts the consumer all
                # the same, so keep its callback until the broker has cancelled it.
                self._connection._spawn(self._cancel_quietly(tag), "cancel-consumer")
            else:
                self._consumers.pop(tag, None)
            raise
        return tag

    async def _cancel_quietly(self, consumer_tag: str) -> None:
        try:
            await self.cancel(consumer_tag)
        except HutchError as exc:
            log.debug("cancelling consumer %s: %s", consumer_tag, exc)

    async def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer; deliveries already on their way still reach its callback."""
        if consumer_tag not in self._consumers:
            return
        try:
            link = await self._ready()
        except BaseException:
            self._consumers.pop(consumer_tag, None)
            raise
        future = self._call_on(link, spec.Basic.Cancel(consumer_tag=consumer_tag))
        # The consumer is forgotten once the broker answered (or the channel failed), even if
        # this call is cancelled first: deliveries sent before the cancel-ok are its own (with
        # no_ack, nacking them as strays would close the channel and lose them).
        future.add_done_callback(functools.partial(self._forget_consumer, consumer_tag))
        await asyncio.shield(future)

    def _forget_consumer(self, consumer_tag: str, _future: asyncio.Future[Any]) -> None:
        self._consumers.pop(consumer_tag, None)

    async def get(self, queue: str, *, no_ack: bool = False) -> IncomingMessage | None:
        """Take one message from ``queue``, or ``None`` if it is empty."""
        result: IncomingMessage | None = await self._rpc(
            spec.Basic.Get(queue=queue, no_ack=no_ack), no_ack
        )
        return result

    def _settle(self, message: IncomingMessage, kind: int, multiple: bool, requeue: bool) -> None:
        """Send the ack (kind 0), nack (1) or reject (2) of ``message``.

        Acks are coalesced: while every delivery below a tag has been settled, its ack is held
        until the link flushes (the end of this read or event-loop iteration, or ``ack_delay``
        seconds later, or once half the prefetch is held) and sent as one ``basic.ack`` with
        ``multiple=True`` covering all of them, so the broker processes one frame per batch
        instead of one per message. Every other settlement, and any frame this link writes
        meanwhile (a channel's or the connection's close included), sends the held ack first.
        """
        link = self._link
        if message._epoch != self._epoch or link is None or self._state is ChannelState.CLOSED:
            log.warning(
                "not settling delivery %d on channel %d: it came before the channel was lost; "
                "the broker delivers the message again",
                message.delivery_tag,
                self.number,
            )
            return
        tag = message.delivery_tag
        if self._ack_epoch != self._epoch:
            self._reset_acks()
        if kind == 0 and not multiple and tag == self._ack_floor + 1:
            self._ack_floor = tag
            if self._ack_ahead:
                self._advance_ack_floor()
            if not self._ack_pending:
                link.hold(self, self.ack_delay)
            self._ack_pending = tag
            self._ack_held += 1
            if self.ack_delay and self._ack_held >= self._ack_batch():
                link.flush_soon()
            return
        if kind == 0:
            link.write(frames.encode_ack(self.number, tag, multiple))
        elif kind == 1:
            link.write(frames.encode_nack(self.number, tag, multiple, requeue))
        else:
            link.write(frames.encode_reject(self.number, tag, requeue))
        if multiple:
            if tag > self._ack_floor:
                self._ack_floor = tag
            self._advance_ack_floor()
        else:
            self._note_settled(tag)

    def _ack_batch(self) -> int:
        """How many acks an ``ack_delay`` may hold: half the prefetch, so that the broker
        always has room to deliver more (a prefetch of 1 or 2 holds none)."""
        prefetch = self._qos.prefetch_count if self._qos is not None else 0
        return max(1, prefetch // 2) if prefetch else 1000

    def _take_held_ack(self) -> bytes:
        """The held ack as a frame (the link calls this when it flushes)."""
        tag, self._ack_pending = self._ack_pending, 0
        self._ack_held = 0
        if not tag or self._ack_epoch != self._epoch:
            return b""
        return frames.encode_ack(self.number, tag, True)

    def _note_settled(self, tag: int) -> None:
        """Delivery ``tag`` needs no ack from us any more (settled, or consumed with no_ack)."""
        if self._ack_epoch != self._epoch:
            self._reset_acks()
        floor = self._ack_floor
        if tag == floor + 1:
            self._ack_floor = tag
            if self._ack_ahead:
                self._advance_ack_floor()
        elif tag > floor:
            ahead = self._ack_ahead
            if ahead is None:
                return
            ahead.add(tag)
            if len(ahead) > 100_000:
                # One delivery held unsettled for very long: stop tracking (and coalescing)
                # until the channel reopens rather than hold a set that keeps growing.
                self._ack_ahead = None
                self._ack_floor = -1

    def _advance_ack_floor(self) -> None:
        ahead = self._ack_ahead
        if ahead is None:
            return
        floor = self._ack_floor
        while floor + 1 in ahead:
            floor += 1
            ahead.discard(floor)
        if ahead and min(ahead) <= floor:
            ahead.difference_update([t for t in ahead if t <= floor])
        self._ack_floor = floor

    def _reset_acks(self) -> None:
        # Delivery tags start again at 1 on a reopened channel.
        self._ack_epoch = self._epoch
        self._ack_floor = 0
        self._ack_pending = 0
        self._ack_held = 0
        self._ack_ahead = set()

    async def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """Acknowledge by delivery tag (``message.ack()`` also guards against stale tags)."""
        link = await self._ready()
        link.write(frames.encode_ack(self.number, delivery_tag, multiple))

    async def nack(
        self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None:
        """Negative-acknowledge by delivery tag."""
        link = await self._ready()
        link.write(frames.encode_nack(self.number, delivery_tag, multiple, requeue))

    async def reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        """Reject by delivery tag."""
        link = await self._ready()
        link.write(frames.encode_reject(self.number, delivery_tag, requeue))

    # -- closing ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the channel; idempotent (a second caller waits for the first to finish).
        Unacked deliveries go back to their queues."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        if self._closed_error is not None or self._state is ChannelState.CLOSED:
            return
        self._closing = self._loop.create_future()
        try:
            await self._close()
        finally:
            self._closing.set_result(None)

    async def _close(self) -> None:
        link = self._link
        error = ConnectionClosed(f"channel {self.number} was closed")
        if self._reopen_task is not None:
            self._reopen_task.cancel()
            self._reopen_task = None
        self._state = ChannelState.CLOSED
        if link is not None and link.is_open:
            # Open, or being opened/restored on this link: close the broker's side too, so the
            # channel number can be used again. Answers to steps already sent come first.
            try:
                async with asyncio.timeout(5):
                    await self._call_on(
                        link,
                        spec.Channel.Close(
                            reply_code=200, reply_text="bye", class_id=0, method_id=0
                        ),
                    )
            except (HutchError, TimeoutError):
                pass
        self._link = None
        self._fail_inflight(error)
        self._finish(None)
        await self._cancel_tasks()

    async def _cancel_tasks(self, keep: asyncio.Task[Any] | None = None) -> None:
        """Cancel the consumer callbacks still running (but not the caller, nor ``keep``)."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current and t is not keep]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
