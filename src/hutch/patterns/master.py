"""Master/Worker: distribute tasks over workers through a queue, safely.

A task is a call by name with keyword arguments: ``await master.proxy.resize(path="a.png")`` (or
``await master.create_task("resize", kwargs={...})``) publishes the serialized kwargs to the queue
named ``resize``; one of the workers consuming that queue runs its handler with them.

On the wire this is aio-pika's ``JsonMaster``, so either side can be aio-pika: the default exchange,
routing key = queue name, ``mandatory``, persistent, ``content_type`` = ``CONTENT_TYPE``, body = the
serialized kwargs. What hutch adds happens around that:

- ``create_task`` returns once the broker confirmed the task; a task no queue takes raises
  ``Unroutable`` (aio-pika only logs it).
- A worker acks a task after its handler returned (within ``ACK_DELAY``, batched with the acks
  of the tasks handled meanwhile: its channel's ``ack_delay``). A handler that raises is retried
  after a growing delay (``Retry``) by republishing the task to a per-delay retry queue
  ``<queue>.retry.<ms>``, whose ``x-message-ttl`` and dead-letter routing send it back to
  ``<queue>`` when the delay is over. After the last attempt, or at once for a body that cannot be
  decoded, the task goes to ``<queue>.dead`` with the reason in its headers (``HEADER_*``). The
  main queue is declared exactly as given, so an aio-pika worker can declare it too.
- Each worker consumes on a channel of its own with a prefetch limit, so at most
  ``prefetch_count`` handlers run at once; plain (non-async) handlers run in a thread pool.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final

from hutch.abc import Channel
from hutch.exceptions import (
    ConnectionClosed,
    DecodeError,
    HutchConnectionError,
    HutchError,
    Unroutable,
)
from hutch.message import PROPERTY_NAMES, DeliveryMode, IncomingMessage, Message
from hutch.patterns.base import (
    MsgpackMixin,
    PickleMixin,
    Proxy,
    Serializing,
    call_handler,
    is_async,
)

__all__ = [
    "DEFAULT_PREFETCH",
    "HEADER_ATTEMPTS",
    "HEADER_ERROR_MESSAGE",
    "HEADER_ERROR_TRACEBACK",
    "HEADER_ERROR_TYPE",
    "HEADER_QUEUE",
    "JsonMaster",
    "Master",
    "MsgpackMaster",
    "NackMessage",
    "PickleMaster",
    "RejectMessage",
    "Retry",
    "Worker",
    "WorkerState",
]

log = logging.getLogger("hutch.master")

DEFAULT_PREFETCH: Final = 64
"""Handlers a worker runs at once unless ``create_worker(prefetch_count=...)`` says otherwise."""

ACK_DELAY: Final = 0.001
"""The ``ack_delay`` of a worker's channel: how long (seconds) it holds the ack of a handled task
to send it with the acks of the tasks handled meanwhile. An ack sent alone costs the broker work
on the path of the next task; the channel sends them sooner once half the prefetch is held, and
before it or its connection closes."""

HEADER_ATTEMPTS: Final = "hutch-attempts"
"""How many times the task failed so far (on retried and dead-lettered tasks)."""
HEADER_ERROR_TYPE: Final = "hutch-error-type"
"""The last error's class (``ValueError``, ``mymodule.MyError``; ``hutch.DecodeError`` for bad
bodies)."""
HEADER_ERROR_MESSAGE: Final = "hutch-error-message"
"""The last error's text: ``str(exc)``, or why the body could not be decoded."""
HEADER_ERROR_TRACEBACK: Final = "hutch-error-traceback"
"""The last error's formatted traceback (its last 8000 characters)."""
HEADER_QUEUE: Final = "hutch-queue"
"""The queue the task was consumed from."""

# A content header must fit in one frame (128 KiB by default): keep what we add well under it.
_MAX_MESSAGE_CHARS = 2000
_MAX_TRACEBACK_CHARS = 8000
_QUEUE_OPTIONS = frozenset({"durable", "exclusive", "passive", "auto_delete", "arguments"})
# Options of a task message that create_task passes on to ``Message``: every property but the
# content type, which the serializer sets.
_MESSAGE_OPTIONS = frozenset(PROPERTY_NAMES) - {"content_type"}
_BATCH_YIELD = 1000


def _read_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class RejectMessage(Exception):
    """Raise in a handler to reject the task (``basic.reject``); it is not retried.

    With ``requeue=False`` (the default) the broker drops the task, or dead-letters it if the
    queue has an ``x-dead-letter-exchange``; with ``requeue=True`` it goes back to the queue.
    """

    def __init__(self, requeue: bool = False) -> None:
        super().__init__(f"reject (requeue={requeue})")
        self.requeue = requeue


class NackMessage(Exception):
    """Raise in a handler to nack the task (``basic.nack``); it is not retried.

    ``requeue`` works as for ``RejectMessage``.
    """

    def __init__(self, requeue: bool = False) -> None:
        super().__init__(f"nack (requeue={requeue})")
        self.requeue = requeue


@dataclass(frozen=True, slots=True)
class Retry:
    """How a worker retries a task whose handler raised.

    Attempt ``n`` (``n`` = 1 for the first retry) waits ``min(delay * factor ** (n - 1),
    max_delay)`` seconds. After ``attempts`` retries failed too, the task is dead-lettered.
    ``Retry(attempts=0)`` dead-letters at the first failure.

    Attributes:
        attempts: retries after the first failure (so a task runs at most ``attempts + 1`` times).
        delay: seconds before the first retry.
        factor: how much each further delay grows.
        max_delay: the cap on any one delay, in seconds.
    """

    attempts: int = 3
    delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 0:
            raise ValueError(f"Retry(attempts=...) must be an integer ≥ 0, not {self.attempts!r}")
        if not self.delay >= 0.001:
            raise ValueError(f"Retry(delay=...) must be at least 0.001 s, not {self.delay!r}")
        if not self.factor >= 1:
            raise ValueError(f"Retry(factor=...) must be ≥ 1, not {self.factor!r}")
        if not self.max_delay >= self.delay:
            raise ValueError(
                f"Retry(max_delay={self.max_delay!r}) must be at least delay={self.delay!r}"
            )

    def delay_ms(self, attempt: int) -> int:
        """The delay before retry number ``attempt`` (1-based), in whole milliseconds."""
        seconds = min(self.delay * self.factor ** (attempt - 1), self.max_delay)
        return max(1, round(seconds * 1000))


class WorkerState(enum.Enum):
    """Where a worker is in its life."""

    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class Master(Serializing):
    """Creates tasks, and workers that run them (the seed's ``Master``; JSON on the wire).

    Args:
        channel: the channel tasks are published on. It must have publisher confirms (the default
            of ``connection.channel()``): ``create_task`` waits for the broker's confirm.

    Subclass and set ``CONTENT_TYPE`` and ``serialize``/``deserialize`` to change the serializer,
    as the seed's ``MsgpackMaster`` does; both ends of a queue need the same one.
    """

    DELIVERY_MODE = DeliveryMode.PERSISTENT

    def __init__(self, channel: Channel) -> None:
        if not channel.publisher_confirms:
            raise ValueError(
                "Master needs a channel with publisher confirms, so that create_task can tell "
                "when the broker took the task: use `await connection.channel()` (confirms are "
                "on by default)"
            )
        self.channel = channel
        self.proxy = Proxy(self.create_task)
        self._workers: set[Worker] = set()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} on channel {self.channel.number}>"

    async def __aenter__(self) -> Master:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- tasks ------------------------------------------------------------------------------

    def _body(self, kwargs: Mapping[str, Any] | None) -> bytes:
        if kwargs is None:
            kwargs = {}
        elif kwargs.__class__ is not dict:
            if not isinstance(kwargs, Mapping):
                raise TypeError(
                    f"task kwargs must be a mapping of argument names to values, "
                    f"not {type(kwargs).__name__}"
                )
            kwargs = dict(kwargs)
        return self.serialize(kwargs)

    def _properties(self, options: dict[str, Any]) -> dict[str, Any]:
        """Check a task's message options and fill in the defaults."""
        unknown = options.keys() - _MESSAGE_OPTIONS
        if unknown:
            detail = (
                "content_type comes from the class's CONTENT_TYPE (subclass Master to change "
                "the serializer)"
                if "content_type" in unknown
                else f"the options are {', '.join(sorted(_MESSAGE_OPTIONS))}"
            )
            raise TypeError(
                f"create_task() got unexpected message options {', '.join(sorted(unknown))}; "
                + detail
            )
        properties = {"delivery_mode": self.DELIVERY_MODE, **options}
        properties["content_type"] = self.CONTENT_TYPE
        return properties

    @staticmethod
    def _explain(exc: HutchError, name: str) -> None:
        if isinstance(exc, Unroutable):
            exc.add_note(
                f"no queue named {name!r} exists: start a worker for it first "
                f"(master.create_worker({name!r}, handler)), or declare the queue beforehand "
                "(durable=True) so that tasks wait in it for workers"
            )

    async def create_task(
        self, name: str, kwargs: Mapping[str, Any] | None = None, **message_options: Any
    ) -> None:
        """Publish one task for the workers of queue ``name``; return once the broker has it.

        Args:
            name: the queue (the task's name; ``proxy.a.b`` gives ``"a.b"``).
            kwargs: the handler's keyword arguments; must be serializable.
            message_options: properties of the task message: ``expiration`` (seconds),
                ``priority``, ``headers``, ``message_id``, ``correlation_id``, ``timestamp``,
                ``delivery_mode`` (persistent by default), ...

        Raises:
            Unroutable: no queue named ``name`` exists, so nobody would ever run the task.
            PublishNacked: the broker refused the task (e.g. a full queue that rejects
                publishes); it is not enqueued.
            ConnectionLost: the connection went away before the confirm; the task may or may not
                be enqueued.
        """
        if message_options:
            message = Message(self._body(kwargs), **self._properties(message_options))
        else:
            message = Message(
                self._body(kwargs), content_type=self.CONTENT_TYPE, delivery_mode=self.DELIVERY_MODE
            )
        try:
            await self.channel.publish(message, name, mandatory=True)
        except HutchError as exc:
            self._explain(exc, name)
            raise

    async def create_tasks(
        self,
        name: str,
        kwargs_list: Iterable[Mapping[str, Any] | None],
        **message_options: Any,
    ) -> None:
        """Publish many tasks for queue ``name`` with their confirms pipelined; return once the
        broker confirmed every one.

        Every task is sent before any confirm is awaited, so a batch costs about one broker
        round trip instead of one per task. ``message_options`` apply to each task.

        Raises:
            The first error (as ``create_task`` would raise it) after every task was settled; its
            notes say how many, and which (by index), were not enqueued. The others are enqueued.
        """
        properties = self._properties(message_options)
        # serialize every task before sending any, so a bad one fails the batch cleanly
        messages = [Message(self._body(kwargs), **properties) for kwargs in kwargs_list]
        publish = self.channel.publish_nowait
        futures: list[asyncio.Future[None]] = []
        for count, message in enumerate(messages, 1):
            futures.append(publish(message, name, mandatory=True))
            if count % _BATCH_YIELD == 0:
                # let the link write what we have and read confirms (and heartbeats) meanwhile
                await asyncio.sleep(0)
        if not futures:
            return
        try:
            await asyncio.wait(futures)
        except asyncio.CancelledError:
            # The caller gave up: the confirms still come; read their errors so none is
            # reported as "never retrieved".
            for future in futures:
                future.add_done_callback(_read_outcome)
            raise
        failed = [
            (i, asyncio.CancelledError() if f.cancelled() else f.exception())
            for i, f in enumerate(futures)
            if f.cancelled() or f.exception() is not None
        ]
        if not failed:
            return
        first = failed[0][1]
        assert first is not None
        if isinstance(first, HutchError):
            self._explain(first, name)
        indexes = ", ".join(str(i) for i, _ in failed[:20]) + (", ..." if len(failed) > 20 else "")
        first.add_note(
            f"{len(failed)} of {len(futures)} tasks were not enqueued (indexes {indexes}); "
            "the others were"
        )
        raise first

    # -- workers ----------------------------------------------------------------------------

    async def create_worker(
        self,
        queue_name: str,
        func: Callable[..., Any],
        *,
        prefetch_count: int = DEFAULT_PREFETCH,
        retry: Retry | None = None,
        executor: Executor | None = None,
        close_timeout: float = 30.0,
        **queue_options: Any,
    ) -> Worker:
        """Declare queue ``queue_name`` and run ``func(**kwargs)`` for each of its tasks.

        Args:
            queue_name: the queue (the task's name).
            func: the handler, ``async def`` or plain (plain ones run in ``executor``, the
                loop's default thread pool unless given). Raise ``RejectMessage`` or
                ``NackMessage`` to reject or nack a task; any other exception retries it.
            prefetch_count: at most this many tasks are handled at once by this worker.
            retry: the retry policy; ``Retry()`` (3 retries after 1, 2 and 4 s) by default.
            close_timeout: how long ``Worker.close()`` waits for handlers in flight.
            queue_options: how to declare the queue, as in aio-pika: ``durable``,
                ``auto_delete``, ``exclusive``, ``passive``, ``arguments``. The retry queues are
                durable when the queue is; the dead-letter queue always is.
        """
        unknown = queue_options.keys() - _QUEUE_OPTIONS
        if unknown:
            raise TypeError(
                f"create_worker() got unexpected options {', '.join(sorted(unknown))}; the queue "
                f"options are {', '.join(sorted(_QUEUE_OPTIONS))}"
            )
        if not isinstance(prefetch_count, int) or prefetch_count < 1:
            raise ValueError(f"prefetch_count must be an integer ≥ 1, not {prefetch_count!r}")
        if close_timeout < 0:
            raise ValueError(f"close_timeout must be ≥ 0 seconds, not {close_timeout!r}")
        if not callable(func):
            raise TypeError(f"the handler must be callable, not {type(func).__name__}")
        retry = Retry() if retry is None else retry
        channel = await self.channel.connection.channel(ack_delay=ACK_DELAY)
        try:
            await channel.set_qos(prefetch_count)
            info = await channel.queue_declare(queue_name, **queue_options)
            worker = Worker(
                self,
                channel,
                info.queue,
                func,
                retry=retry,
                executor=executor,
                close_timeout=close_timeout,
            )
            await worker._start(durable=bool(queue_options.get("durable", False)))
        except BaseException:
            await channel.close()
            raise
        self._workers.add(worker)
        return worker

    async def close(self) -> None:
        """Close every worker this master created (see ``Worker.close``); the channel stays."""
        workers = list(self._workers)
        if workers:
            await asyncio.gather(*(worker.close() for worker in workers))


class Worker:
    """Runs a handler for each task of one queue; made by ``Master.create_worker``.

    Attributes:
        queue: the queue it consumes.
        dead_letter_queue: where tasks go that failed every attempt or could not be decoded.
        retry_queues: the per-delay queues retried tasks wait in.
        channel: the worker's own channel (prefetch limited).
    """

    def __init__(
        self,
        master: Master,
        channel: Channel,
        queue: str,
        func: Callable[..., Any],
        *,
        retry: Retry,
        executor: Executor | None,
        close_timeout: float,
    ) -> None:
        self._master = master
        self.channel = channel
        self.queue = queue
        self.dead_letter_queue = f"{queue}.dead"
        self.retry = retry
        self.retry_queues = tuple(
            dict.fromkeys(
                f"{queue}.retry.{retry.delay_ms(n)}" for n in range(1, retry.attempts + 1)
            )
        )
        self.consumer_tag = ""
        self.close_timeout = close_timeout
        self._func = func
        self._is_async = is_async(func)
        self._executor = executor
        self._durable = False
        self._state = WorkerState.RUNNING
        self._inflight = 0
        self._drained: asyncio.Event | None = None
        self._close_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<hutch.Worker {self.queue!r} {self._state.value}>"

    @property
    def state(self) -> WorkerState:
        """``RUNNING``, ``CLOSING`` (in ``close()``) or ``CLOSED`` (closed, or its channel was
        lost for good: a plain, non-robust connection went away)."""
        return self._state

    @property
    def in_flight(self) -> int:
        """How many tasks this worker is handling right now."""
        return self._inflight

    async def __aenter__(self) -> Worker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- starting ---------------------------------------------------------------------------

    async def _declare_side_queue(self, name: str) -> None:
        if name == self.dead_letter_queue:
            await self.channel.queue_declare(name, durable=True)
            return
        delay_ms = int(name.rsplit(".", 1)[1])
        await self.channel.queue_declare(
            name,
            durable=self._durable,
            arguments={
                "x-message-ttl": delay_ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.queue,
            },
        )

    async def _start(self, *, durable: bool) -> None:
        self._durable = durable
        for name in (*self.retry_queues, self.dead_letter_queue):
            if len(name.encode()) > 255:
                raise ValueError(
                    f"queue name {self.queue!r} is too long for its retry and dead-letter "
                    f"queues ({name!r} is over AMQP's 255 bytes); use a shorter name"
                )
            await self._declare_side_queue(name)
        self.consumer_tag = await self.channel.consume(self.queue, self._on_message)
        self.channel.add_close_listener(self._on_channel_closed)

    def _on_channel_closed(self, _channel: Any, error: BaseException | None) -> None:
        """The worker's channel is closed for good (by ``close()``, or lost without a robust
        connection): the worker is done."""
        closed_here = error is None or isinstance(error, ConnectionClosed)
        if self._state is WorkerState.RUNNING and not closed_here:
            log.warning("worker %r stopped: its channel closed (%s)", self.queue, error)
        self._state = WorkerState.CLOSED
        self._master._workers.discard(self)

    # -- handling a task --------------------------------------------------------------------

    async def _on_message(self, message: IncomingMessage) -> None:
        self._inflight += 1
        try:
            try:
                kwargs = self._master._decode(message.body, message.content_type)
                if kwargs.__class__ is not dict:
                    raise DecodeError(
                        f"a task body must be a {self._master.CONTENT_TYPE} object of keyword "
                        f"arguments, not {type(kwargs).__name__}"
                    )
            except DecodeError as exc:
                if await self._dead_letter(message, exc, attempts=0):
                    raise
                return
            try:
                if self._is_async:
                    await self._func(**kwargs)
                else:
                    await call_handler(self._func, kwargs, self._executor)
            except RejectMessage as exc:
                await message.reject(requeue=exc.requeue)
                return
            except NackMessage as exc:
                await message.nack(requeue=exc.requeue)
                return
            except Exception as exc:
                if await self._failed(message, exc):
                    raise
                return
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # we are being cancelled (close): the broker requeues the task
                # the handler let a CancelledError of its own out (it awaited something that
                # was cancelled): a failure like any other, or the task would stay unsettled
                error = RuntimeError("the handler raised CancelledError without being cancelled")
                error.__cause__ = exc
                if await self._failed(message, error):
                    raise error from exc
                return
            await message.ack()
        finally:
            self._inflight -= 1
            if self._drained is not None and not self._inflight:
                self._drained.set()

    async def _failed(self, message: IncomingMessage, exc: Exception) -> bool:
        """Retry or dead-letter a task whose handler raised; True once it was dead-lettered."""
        headers = dict(message.headers or {})
        previous = headers.get(HEADER_ATTEMPTS)
        attempt = (previous if isinstance(previous, int) and previous >= 0 else 0) + 1
        if attempt > self.retry.attempts:
            return await self._dead_letter(message, exc, attempts=attempt, headers=headers)
        delay_ms = self.retry.delay_ms(attempt)
        log.warning(
            "task of queue %r failed (attempt %d of %d) with %s: %s; retrying in %g s",
            self.queue,
            attempt,
            self.retry.attempts + 1,
            type(exc).__name__,
            exc,
            delay_ms / 1000,
        )
        headers[HEADER_ATTEMPTS] = attempt
        _describe(headers, exc)
        await self._move(message, f"{self.queue}.retry.{delay_ms}", headers)
        return False

    async def _dead_letter(
        self,
        message: IncomingMessage,
        exc: Exception,
        *,
        attempts: int,
        headers: dict[str, Any] | None = None,
    ) -> bool:
        """Move the task to the dead-letter queue; True once it is there."""
        if headers is None:
            headers = dict(message.headers or {})
        headers[HEADER_ATTEMPTS] = attempts
        headers[HEADER_QUEUE] = self.queue
        _describe(headers, exc)
        if not await self._move(message, self.dead_letter_queue, headers):
            return False
        if attempts:
            exc.add_note(
                f"hutch: the task of queue {self.queue!r} failed {attempts} time(s) and was "
                f"moved to {self.dead_letter_queue!r}"
            )
        else:
            exc.add_note(f"hutch: the task was moved to {self.dead_letter_queue!r}")
        return True

    async def _move(self, message: IncomingMessage, queue: str, headers: dict[str, Any]) -> bool:
        """Publish a copy of ``message`` to ``queue`` (confirmed), then ack the original; True
        if it was moved.

        Should the copy not be confirmed, the original is not acked: on a lost connection the
        broker delivers it again; if the broker refused the copy, it is requeued after a pause.
        """
        copy = Message(
            message.body,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=headers,
            delivery_mode=message.delivery_mode,
            priority=message.priority,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            message_id=message.message_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
        )
        try:
            try:
                await self.channel.publish(copy, queue, mandatory=True)
            except Unroutable:
                # someone deleted the queue since we declared it: declare it again
                await self._declare_side_queue(queue)
                await self.channel.publish(copy, queue, mandatory=True)
        except HutchConnectionError as exc:
            log.warning(
                "could not move a task of queue %r to %r (%s); the broker will deliver it again",
                self.queue,
                queue,
                exc,
            )
            return False
        except HutchError as exc:
            pause = self.retry.delay
            log.error(
                "could not move a task of queue %r to %r (%s); requeueing it in %g s",
                self.queue,
                queue,
                exc,
                pause,
            )
            await asyncio.sleep(pause)
            await message.nack(requeue=True)
            return False
        await message.ack()
        return True

    # -- closing ----------------------------------------------------------------------------

    async def close(self, timeout: float | None = None) -> None:
        """Stop consuming, wait for the handlers in flight, and close the worker's channel.

        Handlers still running after ``timeout`` seconds (``close_timeout`` by default) are
        cancelled (a plain handler's thread runs on, but its result is dropped) and their tasks
        go back to the queue. Idempotent; concurrent calls wait for the same close.
        """
        if self._close_task is None:
            self._state = WorkerState.CLOSING
            self._close_task = asyncio.ensure_future(
                self._close(self.close_timeout if timeout is None else timeout)
            )
        await asyncio.shield(self._close_task)

    async def _close(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self.channel.cancel(self.consumer_tag)
        except (HutchError, TimeoutError) as exc:
            log.info("worker %r: could not cancel its consumer (%s)", self.queue, exc)
        if self._inflight:
            self._drained = asyncio.Event()
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._drained.wait()
            except TimeoutError:
                log.warning(
                    "worker %r: %d handler(s) still running after %g s; cancelling them, their "
                    "tasks go back to the queue",
                    self.queue,
                    self._inflight,
                    timeout,
                )
        await self.channel.close()
        self._state = WorkerState.CLOSED
        self._master._workers.discard(self)


def _describe(headers: dict[str, Any], exc: BaseException) -> None:
    """Put ``exc``'s type, text and traceback into a task's headers."""
    cls = type(exc)
    module = cls.__module__
    if cls is DecodeError:
        module = "hutch"
    headers[HEADER_ERROR_TYPE] = (
        cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
    )
    headers[HEADER_ERROR_MESSAGE] = str(exc)[:_MAX_MESSAGE_CHARS]
    # cut each piece (a frame, an exception's text) so that one huge message cannot push the
    # frames out, then keep the end, where the error is
    pieces = traceback.TracebackException.from_exception(exc).format()
    text = "".join(
        piece if len(piece) <= _MAX_MESSAGE_CHARS else piece[:_MAX_MESSAGE_CHARS] + "...\n"
        for piece in pieces
    )
    if len(text) > _MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-_MAX_TRACEBACK_CHARS:]
    headers[HEADER_ERROR_TRACEBACK] = text


JsonMaster = Master
"""aio-pika's name for the JSON master; in hutch, ``Master`` is JSON already."""


class MsgpackMaster(MsgpackMixin, Master):
    """A ``Master`` speaking msgpack, ``application/msgpack`` (``pip install hutch[msgpack]``)."""


class PickleMaster(PickleMixin, Master):
    """A ``Master`` that speaks pickle, as aio-pika's default ``Master`` does.

    Unpickling a task runs code chosen by whoever published it: use this only when every
    publisher to the queue is trusted. Creating one warns (``UnsafeSerializerWarning``).
    """

    def __init__(self, channel: Channel) -> None:
        self._warn_pickle()
        super().__init__(channel)
