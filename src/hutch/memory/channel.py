"""A channel on the embedded broker, with the AMQP channel's methods and semantics.

Everything the broker does happens at once, inside the call: a publish is routed and enqueued
before ``publish`` returns (which, with publisher confirms, waits one loop iteration, as if the
confirm came back), a declaration is checked against the broker's state and refused with the
``ChannelClosed`` subclass and reply text RabbitMQ uses. Deliveries never run inside the call
that caused them: a queue delivers from a callback the loop runs soon after.

A broker-side channel error closes the channel, as RabbitMQ does; on a robust connection the
channel stays usable instead (the AMQP channel reopens itself and restores its consumers; here
nothing was lost, so only the unacked deliveries go back to their queues and delivery tags
start again).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from hutch._listeners import ChannelBase
from hutch.abc import ChannelState, ConsumerCallback, QueueInfo
from hutch.amqp.frames import expiration_text
from hutch.exceptions import (
    ChannelClosed,
    ConnectionClosed,
    HutchError,
    PublishNacked,
    Unroutable,
    channel_error,
)
from hutch.memory.broker import (
    EQUIVALENT_QUEUE_ARGS,
    EXCHANGE_TYPES,
    REPLY_TO,
    BrokerError,
    Content,
    Entry,
    Exchange,
    Queue,
    decode_into,
    encode_header,
    exchange_text,
    inequivalent,
    queue_text,
)
from hutch.message import _DONE, IncomingMessage, Message, make_incoming

if TYPE_CHECKING:
    from hutch.memory.connection import MemoryConnection

log = logging.getLogger("hutch")

_tag_counter = itertools.count(1)
_DEFAULT_EXCHANGE = "ACCESS_REFUSED - operation not permitted on the default exchange"

# (entry, queue, consumer or None for basic.get)
_Delivery = tuple[Entry, Queue, "_Consumer | None"]


class _Consumer:
    __slots__ = (
        "tag",
        "channel",
        "queue",
        "callback",
        "no_ack",
        "exclusive",
        "prefetch",
        "unacked",
    )

    def __init__(
        self,
        tag: str,
        channel: MemoryChannel,
        queue: Queue,
        callback: ConsumerCallback,
        no_ack: bool,
        exclusive: bool,
        prefetch: int,
    ) -> None:
        self.tag = tag
        self.channel = channel
        self.queue = queue
        self.callback = callback
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0

    def has_room(self) -> bool:
        """Whether prefetch (this consumer's, and its channel's global one) allows a delivery."""
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        channel = self.channel
        return not channel._global_prefetch or channel._global_unacked < channel._global_prefetch


class MemoryChannel(ChannelBase):
    """A channel on a ``MemoryConnection``; get one with ``await connection.channel()``."""

    def __init__(self, connection: MemoryConnection, number: int, publisher_confirms: bool) -> None:
        super().__init__()
        self._connection = connection
        self._broker = connection.broker
        self._loop = asyncio.get_running_loop()
        self.number = number
        self.publisher_confirms = publisher_confirms
        self._state = ChannelState.OPEN
        self._closed_error: HutchError | None = None
        self._epoch = 1
        self._tag = 0
        self._unacked: dict[int, _Delivery] = {}
        self._consumers: dict[str, _Consumer] = {}
        self._prefetch = 0
        self._global_prefetch = 0
        self._global_unacked = 0
        self._last_queue = ""
        self._reply_queue: Queue | None = None
        self._reply_to = ""
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"<hutch.memory.MemoryChannel {self.number} {self._state.value}>"

    # -- state ------------------------------------------------------------------------------

    @property
    def connection(self) -> MemoryConnection:
        return self._connection

    def _check_open(self) -> None:
        if self._state is not ChannelState.OPEN:
            raise self._closed_error or ConnectionClosed(f"channel {self.number} is closed")

    # -- broker-side errors -----------------------------------------------------------------

    def _fail(self, code: int, text: str, method: str) -> ChannelClosed:
        """Close the channel for a broker-side error, as RabbitMQ does, and return the error
        (on a robust connection the channel stays usable, as the AMQP one reopens)."""
        error = channel_error(code, text, method)
        log.warning("channel %d: %s", self.number, error)
        self._notify_error(error)
        if self._connection.robust:
            self._requeue_unacked()
            self._epoch += 1
            self._tag = 0
            for consumer in self._consumers.values():
                consumer.unacked = 0
        else:
            self._shutdown(error, error)
        return error

    def _refused(self, error: BrokerError, method: str) -> ChannelClosed:
        return self._fail(error.code, error.text, method)

    # -- lookups ----------------------------------------------------------------------------

    def _queue_name(self, queue: str, method: str) -> str:
        """``""`` means the queue this channel declared last, as in RabbitMQ."""
        if queue:
            return queue
        if not self._last_queue:
            raise self._fail(404, "NOT_FOUND - no previously declared queue", method)
        return self._last_queue

    def _queue(self, name: str, method: str) -> Queue:
        name = self._queue_name(name, method)
        queue = self._broker.queue(name)
        if queue is None:
            raise self._fail(404, f"NOT_FOUND - no {queue_text(name)}", method)
        self._check_exclusive(queue, method)
        return queue

    def _check_exclusive(self, queue: Queue, method: str) -> None:
        if queue.owner is not None and queue.owner is not self._connection:
            raise self._fail(405, _locked(queue.name), method)

    def _exchange(self, name: str, method: str) -> Exchange:
        exchange = self._broker.exchange(name)
        if exchange is None:
            raise self._fail(404, f"NOT_FOUND - no {exchange_text(name)}", method)
        return exchange

    # -- declarations -----------------------------------------------------------------------

    async def set_qos(
        self, prefetch_count: int = 0, *, prefetch_size: int = 0, global_: bool = False
    ) -> None:
        """Limit unacked deliveries per consumer started afterwards (``global_=True``: shared
        by every consumer of the channel, at once)."""
        self._check_open()
        if prefetch_size:
            raise self._fail(
                540, f"NOT_IMPLEMENTED - prefetch_size!=0 ({prefetch_size})", "Basic.Qos"
            )
        if not 0 <= prefetch_count <= 65535:
            raise ValueError(f"prefetch_count must be between 0 and 65535, not {prefetch_count}")
        if global_:
            self._global_prefetch = prefetch_count
            for consumer in self._consumers.values():
                consumer.queue.kick()
        else:
            self._prefetch = prefetch_count

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
        self._check_open()
        method = "Exchange.Declare"
        if not exchange:
            raise self._fail(403, _DEFAULT_EXCHANGE, method)
        broker = self._broker
        existing = broker.exchange(exchange)
        if passive:
            if existing is None:
                raise self._fail(404, f"NOT_FOUND - no {exchange_text(exchange)}", method)
            return
        if existing is None:
            if exchange.startswith("amq."):
                raise self._fail(
                    403,
                    f"ACCESS_REFUSED - exchange name '{exchange}' contains reserved prefix 'amq.*'",
                    method,
                )
            if type not in EXCHANGE_TYPES:
                # RabbitMQ closes the whole connection (503); closing the channel is enough here
                raise self._fail(503, f"COMMAND_INVALID - unknown exchange type '{type}'", method)
            broker.add_exchange(
                Exchange(
                    exchange,
                    type,
                    durable=durable,
                    auto_delete=auto_delete,
                    internal=internal,
                    arguments=arguments,
                )
            )
            return
        for key, received, current in (
            ("type", type, existing.type),
            ("durable", durable, existing.durable),
            ("auto_delete", auto_delete, existing.auto_delete),
            ("internal", internal, existing.internal),
            (
                "alternate-exchange",
                (arguments or {}).get("alternate-exchange"),
                existing.arguments.get("alternate-exchange"),
            ),
        ):
            if received != current:
                raise self._refused(
                    inequivalent("exchange", exchange, key, received, current), method
                )

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        """Delete an exchange (deleting one that does not exist is not an error)."""
        self._check_open()
        method = "Exchange.Delete"
        if not exchange:
            raise self._fail(403, _DEFAULT_EXCHANGE, method)
        found = self._broker.exchange(exchange)
        if found is None:
            return
        if exchange.startswith("amq."):
            raise self._fail(
                403,
                f"ACCESS_REFUSED - deletion of system {exchange_text(exchange)} not allowed",
                method,
            )
        if if_unused and found.bindings:
            raise self._fail(406, f"PRECONDITION_FAILED - {exchange_text(exchange)} in use", method)
        self._broker.delete_exchange(found)

    async def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Bind exchange ``destination`` to ``source``."""
        self._check_open()
        method = "Exchange.Bind"
        if not destination or not source:
            raise self._fail(403, _DEFAULT_EXCHANGE, method)
        found_source = self._exchange(source, method)
        found_destination = self._exchange(destination, method)
        self._bind(found_source, found_destination, routing_key, arguments, method)

    async def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Remove a binding between two exchanges (a missing one is not an error)."""
        self._check_open()
        method = "Exchange.Unbind"
        if not destination or not source:
            raise self._fail(403, _DEFAULT_EXCHANGE, method)
        broker = self._broker
        found_source = broker.exchange(source)
        found_destination = broker.exchange(destination)
        if found_source is None or found_destination is None:
            return
        broker.unbind(found_source, found_destination, routing_key, dict(arguments or {}))

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
        """Declare a queue and return its name and counts (``queue=""``: the broker names it;
        ``passive=True``: only check that it exists)."""
        self._check_open()
        method = "Queue.Declare"
        broker = self._broker
        if passive:
            if queue == REPLY_TO:
                return QueueInfo(REPLY_TO, 0, 1)  # what RabbitMQ answers
            found = self._queue(queue, method)
            found.expire_head()
            found.touch()
            self._last_queue = found.name
            return QueueInfo(found.name, len(found.ready), len(found.consumers))
        name = queue or broker.new_queue_name(self._connection.robust)
        if name.startswith("amq.") and queue:
            raise self._fail(
                403,
                f"ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'",
                method,
            )
        args = dict(arguments or {})
        existing = broker.queue(name)
        if existing is not None:
            owner = existing.owner
            if (owner is not None and owner is not self._connection) or (
                (owner is not None) != exclusive
            ):
                raise self._fail(405, _locked(name), method)
            for key, received, current in (
                ("durable", durable, existing.durable),
                ("auto_delete", auto_delete, existing.auto_delete),
            ):
                if received != current:
                    raise self._refused(inequivalent("queue", name, key, received, current), method)
            for key in EQUIVALENT_QUEUE_ARGS:
                wanted, current_arg = args.get(key), existing.arguments.get(key)
                if wanted != current_arg:
                    raise self._refused(
                        inequivalent("queue", name, key, wanted, current_arg), method
                    )
            existing.expire_head()
            existing.touch()
            self._last_queue = name
            return QueueInfo(name, len(existing.ready), len(existing.consumers))
        try:
            created = Queue(
                broker,
                name,
                durable=durable,
                owner=self._connection if exclusive else None,
                auto_delete=auto_delete,
                arguments=args,
            )
        except BrokerError as exc:
            raise self._refused(exc, method) from None
        broker.add_queue(created)
        created.touch()
        self._last_queue = name
        return QueueInfo(name, 0, 0)

    def _bind(
        self,
        source: Exchange,
        destination: Exchange | Queue,
        routing_key: str,
        arguments: dict[str, Any] | None,
        method: str,
    ) -> None:
        args = dict(arguments or {})
        self._check_binding_arguments(source, args, method)
        self._broker.add_binding(source, destination, routing_key, args)

    def _check_binding_arguments(self, source: Exchange, args: dict[str, Any], method: str) -> None:
        if source.type != "headers" or "x-match" not in args:
            return
        mode = args["x-match"]
        if isinstance(mode, bytes):
            mode = mode.decode()
        if mode not in ("all", "any", "all-with-x", "any-with-x"):
            raise self._fail(
                406,
                f"PRECONDITION_FAILED - Invalid x-match field value {mode!r}; expected all, "
                "any, all-with-x, or any-with-x",
                method,
            )

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Bind ``queue`` to ``exchange``."""
        self._check_open()
        method = "Queue.Bind"
        if not exchange:
            raise self._fail(403, _DEFAULT_EXCHANGE, method)
        if not queue and not routing_key:
            routing_key = self._queue_name(queue, method)
        found_exchange = self._exchange(exchange, method)
        found = self._queue(queue, method)
        self._bind(found_exchange, found, routing_key, arguments, method)

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Remove a binding of ``queue`` to ``exchange`` (a missing one is not an error)."""
        self._check_open()
        method = "Queue.Unbind"
        if not exchange:
            raise self._fail(403, _DEFAULT_EXCHANGE, method)
        broker = self._broker
        found = broker.queue(self._queue_name(queue, method))
        found_exchange = broker.exchange(exchange)
        if found is None or found_exchange is None:
            return
        self._check_exclusive(found, method)
        broker.unbind(found_exchange, found, routing_key, dict(arguments or {}))

    async def queue_purge(self, queue: str) -> int:
        """Remove every ready message from ``queue``; return how many."""
        self._check_open()
        return self._queue(queue, "Queue.Purge").purge()

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete ``queue``; return how many messages it held (0 if there was no queue)."""
        self._check_open()
        method = "Queue.Delete"
        found = self._broker.queue(self._queue_name(queue, method))
        if found is None:
            return 0
        self._check_exclusive(found, method)
        if if_unused and found.consumers:
            raise self._fail(406, f"PRECONDITION_FAILED - {queue_text(found.name)} in use", method)
        if if_empty and found.ready:
            raise self._fail(
                406, f"PRECONDITION_FAILED - {queue_text(found.name)} not empty", method
            )
        return self._broker.delete_queue(found, by=self)

    # -- publishing -------------------------------------------------------------------------

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
        has it (one loop iteration later) and raise what the broker refused.

        Raises:
            Unroutable: ``mandatory=True`` and no queue took the message.
            PublishNacked: a queue refused it (``x-overflow: reject-publish``).
            NotFound: the exchange does not exist (the channel is closed, as by RabbitMQ).
        """
        msg = message if isinstance(message, Message) else _as_message(message)
        self._check_open()
        error = self._publish(msg, routing_key, exchange, mandatory)
        if not self.publisher_confirms:
            return
        await asyncio.sleep(0)
        if error is not None:
            raise error

    def publish_nowait(
        self,
        message: Message | bytes,
        routing_key: str = "",
        *,
        exchange: str = "",
        mandatory: bool = False,
    ) -> asyncio.Future[None]:
        """Publish without waiting: return a future that is already resolved, as the broker's
        confirm would resolve it (or failed, as ``publish`` would raise)."""
        future: asyncio.Future[None] = self._loop.create_future()
        msg = message if isinstance(message, Message) else _as_message(message)
        try:
            self._check_open()
        except HutchError as exc:
            future.set_exception(exc)
            return future
        error = self._publish(msg, routing_key, exchange, mandatory)
        if error is not None and self.publisher_confirms:
            future.set_exception(error)
        else:
            future.set_result(None)
        return future

    def _publish(
        self, message: Message, routing_key: str, exchange_name: str, mandatory: bool
    ) -> HutchError | None:
        """Route and enqueue; return the error a confirm would report, if any."""
        if len(routing_key) > 85 and len(routing_key.encode()) > 255:
            raise ValueError(
                f"routing key is {len(routing_key.encode())} bytes long; AMQP allows at most 255"
            )
        broker = self._broker
        exchange: Exchange | None = None
        if exchange_name:
            exchange = broker.exchange(exchange_name)
            if exchange is None:
                return self._fail(
                    404, f"NOT_FOUND - no {exchange_text(exchange_name)}", "Basic.Publish"
                )
            if exchange.internal:
                return self._fail(
                    403,
                    f"ACCESS_REFUSED - cannot publish to internal {exchange_text(exchange_name)}",
                    "Basic.Publish",
                )
        if message.reply_to == REPLY_TO:
            if self._reply_queue is None:
                return self._fail(
                    406, "PRECONDITION_FAILED - fast reply consumer does not exist", "Basic.Publish"
                )
            message.reply_to = self._reply_to
            try:
                header = encode_header(message)
            finally:
                message.reply_to = REPLY_TO
        else:
            header = encode_header(message)
        expiration = message.expiration
        content = Content(
            message.body,
            header,
            exchange_name,
            routing_key,
            message.priority or 0,
            None if expiration is None else int(expiration_text(expiration)),
        )
        queues = broker.route(exchange, routing_key, lambda: message.headers)
        if not queues:
            if mandatory:
                return self._return(content)
            return None
        refused = False
        for queue in queues:
            if not queue.enqueue(content):
                refused = True
        if refused:
            return PublishNacked(
                f"the broker nacked a message on channel {self.number}: a queue it was routed "
                "to is full and refuses new messages (x-overflow: reject-publish); publish it "
                "again later"
            )
        return None

    def _return(self, content: Content) -> Unroutable | None:
        """A mandatory message no queue took: tell the return listeners (soon, as a
        ``basic.return`` would), and report it to the publisher if it waits for a confirm."""
        returned = make_incoming(
            self, self._epoch, 0, False, content.exchange, content.routing_key, "", True
        )
        decode_into(content, returned)
        error = Unroutable(content.exchange, content.routing_key, 312, "NO_ROUTE", returned)
        if self._return_listeners:
            self._loop.call_soon(self._notify_returned, error)
        elif not self.publisher_confirms:
            log.warning("%s", error)
        return error if self.publisher_confirms else None

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

        ``callback(message)`` is called for each delivery, in order, from the event loop (never
        inside the call that published the message). If it returns an awaitable, that runs as a
        task the channel owns. Settle each message unless ``no_ack=True``.
        """
        self._check_open()
        tag = consumer_tag or f"hutch.memory.{next(_tag_counter)}"
        if tag in self._consumers:
            raise ValueError(f"consumer tag {tag!r} is already in use on this channel")
        method = "Basic.Consume"
        if queue == REPLY_TO:
            if not no_ack:
                raise self._fail(
                    406, "PRECONDITION_FAILED - reply consumer cannot acknowledge", method
                )
            if self._reply_queue is not None:
                raise self._fail(406, "PRECONDITION_FAILED - reply consumer already set", method)
            found, self._reply_to = self._broker.add_reply_queue(self)
            self._reply_queue = found
        else:
            found = self._queue(queue, method)
            if found.exclusive_consumer or (exclusive and found.consumers):
                raise self._fail(
                    403, f"ACCESS_REFUSED - {queue_text(found.name)} in exclusive use", method
                )
        consumer = _Consumer(tag, self, found, callback, no_ack, exclusive, self._prefetch)
        self._consumers[tag] = consumer
        found.add_consumer(consumer)
        return tag

    async def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer; its unacked deliveries stay unacked until settled."""
        consumer = self._consumers.pop(consumer_tag, None)
        if consumer is None:
            return
        self._detach(consumer)

    def _detach(self, consumer: _Consumer) -> None:
        queue = consumer.queue
        if queue is self._reply_queue:
            self._reply_queue = None
        queue.remove_consumer(consumer)

    def _cancelled_by_broker(self, consumer: _Consumer, *, quiet: bool) -> None:
        """The consumer's queue was deleted."""
        if self._consumers.pop(consumer.tag, None) is not None and not quiet:
            log.warning(
                "the broker cancelled consumer %s on channel %d (its queue was deleted)",
                consumer.tag,
                self.number,
            )

    def _deliver(self, consumer: _Consumer, entry: Entry, queue: Queue) -> None:
        """Hand one message to a consumer (called by the queue's dispatch)."""
        self._tag += 1
        tag = self._tag
        content = entry.content
        no_ack = consumer.no_ack
        message = make_incoming(
            self,
            self._epoch,
            tag,
            entry.redelivered,
            content.exchange,
            content.routing_key,
            consumer.tag,
            no_ack,
        )
        decode_into(content, message)
        if not no_ack:
            self._unacked[tag] = (entry, queue, consumer)
            consumer.unacked += 1
            self._global_unacked += 1
            queue.unacked += 1
        try:
            result = consumer.callback(message)
        except Exception as exc:
            self._broker.record_error(queue, exc)
            return
        if result is not None:
            if isinstance(result, Coroutine):
                task = self._loop.create_task(result)
            elif result is _DONE or not inspect.isawaitable(result):
                return  # e.g. ``lambda m: m.ack()``: settled already, nothing left to run
            else:
                task = asyncio.ensure_future(result)
            queue.busy += 1
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._task_done, queue))

    def _task_done(self, queue: Queue, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        queue.busy -= 1
        if not task.cancelled():
            error = task.exception()
            if error is not None:
                self._broker.record_error(queue, error)
                return
        if queue._waiters:
            queue.notify()

    async def get(self, queue: str, *, no_ack: bool = False) -> IncomingMessage | None:
        """Take one message from ``queue``, or ``None`` if it is empty."""
        self._check_open()
        found = self._queue(queue, "Basic.Get")
        found.touch()
        entry = found.take()
        if entry is None:
            if found._waiters:
                found.notify()
            return None
        self._tag += 1
        tag = self._tag
        content = entry.content
        message = make_incoming(
            self,
            self._epoch,
            tag,
            entry.redelivered,
            content.exchange,
            content.routing_key,
            "",
            no_ack,
        )
        decode_into(content, message)
        message.message_count = len(found.ready)
        if not no_ack:
            self._unacked[tag] = (entry, found, None)
            found.unacked += 1
        elif found._waiters:
            found.notify()
        return message

    # -- settling ---------------------------------------------------------------------------

    def _settle(self, message: IncomingMessage, kind: int, multiple: bool, requeue: bool) -> None:
        if message._epoch != self._epoch or self._state is not ChannelState.OPEN:
            log.warning(
                "not settling delivery %d on channel %d: it came before the channel was closed; "
                "the broker delivers the message again",
                message.delivery_tag,
                self.number,
            )
            return
        self._settle_tag(message.delivery_tag, kind, multiple, requeue)

    def _settle_tag(self, tag: int, kind: int, multiple: bool, requeue: bool) -> None:
        unacked = self._unacked
        if multiple:
            if tag and tag not in unacked:
                self._unknown_tag(tag, kind)
                return
            tags = [number for number in unacked if not tag or number <= tag]
            deliveries = [unacked.pop(number) for number in tags]
        else:
            delivery = unacked.pop(tag, None)
            if delivery is None:
                self._unknown_tag(tag, kind)
                return
            deliveries = [delivery]
        touched: set[Queue] = set()
        for entry, queue, consumer in deliveries:
            queue.unacked -= 1
            if consumer is not None:
                consumer.unacked -= 1
                self._global_unacked -= 1
            touched.add(queue)
            if kind == 0:
                continue
            if requeue:
                queue.requeue(entry)
            elif not queue.deleted:
                queue.dead_letter(entry.content, "rejected")
        if self._global_prefetch:
            for consumer in self._consumers.values():
                touched.add(consumer.queue)
        for queue in touched:
            queue.kick()
            if queue._waiters:
                queue.notify()

    def _unknown_tag(self, tag: int, kind: int) -> None:
        method = ("Basic.Ack", "Basic.Nack", "Basic.Reject")[kind]
        self._fail(406, f"PRECONDITION_FAILED - unknown delivery tag {tag}", method)

    async def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """Acknowledge by delivery tag (``message.ack()`` also guards against stale tags)."""
        self._check_open()
        self._settle_tag(delivery_tag, 0, multiple, False)

    async def nack(
        self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None:
        """Negative-acknowledge by delivery tag."""
        self._check_open()
        self._settle_tag(delivery_tag, 1, multiple, requeue)

    async def reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        """Reject by delivery tag."""
        self._check_open()
        self._settle_tag(delivery_tag, 2, False, requeue)

    def _requeue_unacked(self) -> None:
        unacked, self._unacked = self._unacked, {}
        self._global_unacked = 0
        for entry, queue, consumer in unacked.values():
            queue.unacked -= 1
            if consumer is not None:
                consumer.unacked -= 1
            queue.requeue(entry)
            if queue._waiters:
                queue.notify()

    # -- closing ----------------------------------------------------------------------------

    def _stop_consuming(self) -> None:
        consumers = list(self._consumers.values())
        self._consumers.clear()
        for consumer in consumers:
            self._detach(consumer)

    def _shutdown(self, error: HutchError | None, closed_error: HutchError) -> None:
        """Close now: cancel the consumers, requeue the unacked deliveries, tell the
        listeners. Callback tasks are left to the caller."""
        if self._state is ChannelState.CLOSED:
            return
        self._state = ChannelState.CLOSED
        self._closed_error = closed_error
        self._stop_consuming()
        self._requeue_unacked()
        self._connection._forget_channel(self)
        self._notify_closed(error)

    async def close(self) -> None:
        """Close the channel; idempotent. Unacked deliveries go back to their queues and the
        consumer callbacks still running are cancelled."""
        if self._state is ChannelState.CLOSED:
            await self._cancel_tasks()
            return
        self._shutdown(None, ConnectionClosed(f"channel {self.number} was closed"))
        await self._cancel_tasks()

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def _cancel_tasks_now(self) -> None:
        """Cancel the callback tasks without waiting (their loop may be gone)."""
        for task in list(self._tasks):
            if not task.get_loop().is_closed():
                task.cancel()
        self._tasks.clear()


def _as_message(message: object) -> Message:
    if isinstance(message, Message):
        return message
    if isinstance(message, (bytes, bytearray, memoryview)):
        return Message(bytes(message))
    raise TypeError(f"publish() takes a hutch.Message or bytes, not {message.__class__.__name__}")


def _locked(queue: str) -> str:
    return (
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked {queue_text(queue)}. It "
        "could be originally declared on another connection or the exclusive property value "
        "does not match that of the original declaration."
    )
