"""RPC: call a function in another process over the broker and get its result back.

A caller publishes a *call* message to the queue named after the function (``"multiply"``, or
``"ex::multiply"`` with a custom exchange) and waits for the *reply* with the same correlation id.
A callee registers a function under that name: it declares the queue, consumes it, runs the function
with the message's keyword arguments and publishes the result (or the error) to the call's
``reply_to``. Several callees of one name share its queue, so the broker balances calls over them.

What goes on the wire is aio-pika's ``JsonRPC`` (``docs/rpc.md``, ``shared/aio-pika-wire.md``), so
hutch and aio-pika programs call each other. What hutch adds:

- every call has a deadline (``CallTimeout``), and the call message expires with it, so a callee
  does not run a call nobody waits for any more;
- a call to a name nobody registered fails at once (the broker returns the mandatory message);
- a lost connection fails the calls in flight at once (``ConnectionLost``) instead of leaving them
  waiting; on a robust connection the callee's queues and consumers come back by themselves;
- errors come back as real exceptions: builtin types and the classes you list as themselves,
  anything else as ``RemoteError`` with the remote traceback. Nothing named by a message is imported
  or unpickled;
- the reply path defaults to RabbitMQ's direct reply-to (``amq.rabbitmq.reply-to``): no reply queue
  to declare, and measurably faster (``bench/rpc_reply_path.py``); ``reply_path="queue"`` gives an
  exclusive reply queue bound to ``rpc.dlx`` as aio-pika's.

The caller never waits for a publisher confirm before its reply can arrive: on the direct reply
path, when the channel it is given has confirms, calls go out on a channel of the RPC object's own
without them (a returned call is matched by its correlation id instead).
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import functools
import itertools
import logging
import os
import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import Any, Final, Literal, Self

from hutch.abc import Channel, Connection
from hutch.exceptions import (
    CallTimeout,
    ConnectionClosed,
    ConnectionLost,
    DecodeError,
    HutchError,
    NotFound,
    RemoteError,
    Unroutable,
)
from hutch.message import IncomingMessage, Message
from hutch.patterns.base import (
    MsgpackMixin,
    PickleMixin,
    Proxy,
    Serializing,
    call_handler,
    is_async,
)

log = logging.getLogger("hutch.rpc")

DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"
DLX_NAME: Final = "rpc.dlx"
DEFAULT_TIMEOUT: Final = 60.0
DEFAULT_CONCURRENCY: Final = 32
DEFAULT_PRIORITY: Final = 5
_TRACEBACK_LIMIT = 32 * 1024
_DEADLINE_SLACK = 1e-6  # a deadline this close is due (timers fire at, not after, their time)
_REARM_MIN = 0.001  # the deadline timer is never armed for less than this ahead
_QUEUE_OPTIONS = frozenset({"durable", "exclusive", "auto_delete", "arguments"})
# Re-raising these into a coroutine is not possible (StopIteration) or would be misread.
_NOT_RECREATED = frozenset({"StopIteration", "StopAsyncIteration"})

ReplyPath = Literal["direct", "queue"]


class _Default(enum.Enum):
    TIMEOUT = "the RPC object's timeout"


DEFAULT: Final = _Default.TIMEOUT


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class _Call:
    """One call waiting for its reply (until ``deadline``, in loop time, unless it is None)."""

    __slots__ = ("rpc", "name", "future", "timeout", "deadline")

    def __init__(self, rpc: RPC, name: str, future: asyncio.Future[Any]) -> None:
        self.rpc = rpc
        self.name = name
        self.future = future
        self.timeout: float | None = None
        self.deadline: float | None = None

    def expire(self) -> None:
        if not self.future.done():
            self.future.set_exception(
                CallTimeout(
                    f"no reply to {self.name!r} within {self.timeout:g} s: the callee is slow, "
                    "busy or gone. The call message expires with the deadline, so no callee runs "
                    "it if none took it yet; pass timeout= to wait longer"
                )
            )

    def confirmed(self, confirm: asyncio.Future[None]) -> None:
        """The broker's answer to the publish: only a failure matters to the call."""
        if confirm.cancelled():
            return
        error = confirm.exception()
        if error is None or self.future.done():
            return
        if isinstance(error, Unroutable):
            error = _no_callee(self.name, error)
        elif isinstance(error, NotFound) and self.rpc.exchange:
            error = _no_exchange(self.name, self.rpc.exchange, error)
        self.future.set_exception(error)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def _no_callee(name: str, returned: Unroutable) -> Unroutable:
    """The broker returned a call: say so in RPC terms, keeping ``Unroutable``'s attributes."""
    error = Unroutable(
        returned.exchange,
        returned.routing_key,
        returned.reply_code,
        returned.reply_text,
        returned.message,
    )
    error.args = (
        f"no callee registered for {name!r}: the broker has no queue for routing key "
        f"{returned.routing_key!r} ({returned.reply_code} {returned.reply_text}); start a callee "
        f"with rpc.register({name!r}, func) before calling it",
    )
    return error


def _no_exchange(name: str, exchange: str, error: NotFound, *, this_call: bool = True) -> NotFound:
    """The call's exchange is gone: aio-pika's topology declares it auto-delete, so the broker
    deletes it when the last callee's queue goes. ``this_call``: the confirm says it was this
    call the broker refused; else it is one of the calls waiting on the channel the broker
    closed (without confirms, which one is not known)."""
    translated = NotFound(error.reply_code, error.reply_text, method=error.method)
    what = (
        f"no callee registered for {name!r}: exchange {exchange!r} does not exist"
        if this_call
        else f"the call to {name!r} failed: exchange {exchange!r} does not exist, so no callee "
        "is registered behind it"
    )
    lost = (
        ""
        if this_call
        else ", which loses the replies of every call waiting on it (a callee may have run one "
        "it took before)"
    )
    translated.args = (
        f"{what} (the broker auto-deletes it when its last callee leaves) and the broker closed "
        f"the channel ({error.reply_code} {error.reply_text}){lost}; on a robust connection the "
        "channel comes back and declares the exchange again",
    )
    return translated


async def _close_quietly(channel: Channel) -> None:
    try:
        await channel.close()
    except HutchError as exc:
        log.debug("closing the RPC's calls channel: %s", exc)


def _deadline_of(call: _Call) -> float:
    return call.deadline or 0.0


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Done callback for a publish nobody awaits: log its failure instead of warning later."""
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not publish an RPC reply: %s", future.exception())


class _ReplyPath:
    """Where replies arrive: one consumer on the caller's channel, dispatching by correlation id.

    Direct reply-to allows one consumer per channel, so RPC objects sharing a channel share its
    direct path (see ``_direct_path``); an exclusive reply queue belongs to one RPC object.
    """

    def __init__(self, channel: Channel, direct: bool) -> None:
        self.channel = channel
        self.direct = direct
        self.address = DIRECT_REPLY_TO if direct else ""
        self.pending: dict[str, _Call] = {}
        self.users = 0
        self.consumer_tag: str | None = None
        self.closed = False
        self._prefix = f"{os.urandom(6).hex()}."
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._on_return: Callable[[Unroutable], None] | None = None
        self._on_close: Callable[[Any, BaseException | None], None] | None = None
        self._on_error: Callable[[Any, BaseException | None], None] | None = None
        # One timer for every pending call's deadline, armed for the earliest of them: a timer
        # per call would be armed and cancelled on every call (measured: 7 µs of CPU and about
        # 8 µs of latency per call awaited one by one).
        self._deadline_timer: asyncio.Handle | None = None
        self._deadline_at: float | None = None

    def next_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def add_deadline(self, call: _Call, timeout: float) -> None:
        """``call`` (pending) fails with ``CallTimeout`` ``timeout`` seconds from now."""
        call.timeout = timeout
        deadline = call.deadline = asyncio.get_running_loop().time() + timeout
        armed = self._deadline_at
        if armed is None or deadline < armed:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        # The time is kept here, not asked of the handle: uvloop returns a plain Handle (no
        # ``when()``) for a timer due in under half a millisecond.
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = when
        self._deadline_timer = asyncio.get_running_loop().call_at(when, self._expire_due)

    def _expire_due(self) -> None:
        """Fail the pending calls whose deadline has come, earliest first; arm for the next."""
        self._deadline_timer = self._deadline_at = None
        now = asyncio.get_running_loop().time()
        due: list[_Call] = []
        upcoming: float | None = None
        for call in self.pending.values():
            deadline = call.deadline
            if deadline is None or call.future.done():
                continue
            if deadline <= now + _DEADLINE_SLACK:
                due.append(call)
            elif upcoming is None or deadline < upcoming:
                upcoming = deadline
        if upcoming is not None:
            # Never less than a millisecond ahead: uvloop rounds timers to whole milliseconds
            # and may fire one a little early, which must not turn into a busy loop.
            self._arm(max(upcoming, now + _REARM_MIN))
        for call in sorted(due, key=_deadline_of):
            call.expire()

    def stop_deadlines(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_timer = self._deadline_at = None

    async def open(self) -> None:
        async with self._lock:
            if self.consumer_tag is not None:
                return
            channel = self.channel
            if self.direct:
                # The broker requires the consumer to exist before any call names it as reply_to.
                self.consumer_tag = await channel.consume(
                    DIRECT_REPLY_TO, self.on_reply, no_ack=True
                )
            else:
                info = await channel.queue_declare("", exclusive=True, auto_delete=True)
                self.address = info.queue
                await self.bind_dlx()
                self.consumer_tag = await channel.consume(
                    self.address, self.on_reply, no_ack=True, exclusive=True
                )
            ref = weakref.ref(self)
            if not channel.publisher_confirms:
                # No confirm future reports a returned call on this channel: match the broker's
                # returns to calls by correlation id instead.
                self._on_return = functools.partial(_path_returned, ref)
                channel.add_return_listener(self._on_return)
            self._on_close = functools.partial(_path_channel_closed, ref)
            channel.add_close_listener(self._on_close)
            if self.direct:
                # (An exclusive reply queue outlives a channel error: the reopened channel
                # consumes it again and the replies still come.)
                self._on_error = functools.partial(_path_channel_error, ref)
                channel.add_error_listener(self._on_error)
            _watch_connection(self)

    async def bind_dlx(self) -> None:
        """Bind the reply queue to ``rpc.dlx``, as aio-pika's caller does, so that calls which
        expire in a callee's queue are dead-lettered back here (by their "From" header).

        ``rpc.dlx`` is auto-delete and shared by every caller: it vanishes when the last
        binding goes, possibly between our declare and our bind, and the broker answers that
        404 by closing the channel. So this runs on a channel of its own, and retries.
        """
        connection = self.channel.connection
        for _attempt in range(5):
            side = await connection.channel(publisher_confirms=False)
            try:
                await side.exchange_declare(DLX_NAME, "headers", auto_delete=True)
                await side.queue_bind(
                    self.address, DLX_NAME, "", arguments={"From": self.address, "x-match": "any"}
                )
                return
            except NotFound as exc:
                log.debug("binding the reply queue to %s: %s; retrying", DLX_NAME, exc)
            finally:
                await side.close()
        log.warning(
            "could not bind the reply queue to %s: it kept disappearing; calls that expire in a "
            "queue will end at their deadline instead",
            DLX_NAME,
        )

    def on_reply(self, message: IncomingMessage) -> None:
        cid = message.correlation_id
        call = self.pending.pop(cid, None) if cid is not None else None
        if call is None:
            log.debug(
                "dropping a reply nobody waits for (correlation id %r, type %r): its call "
                "timed out, was cancelled, or its RPC object was closed",
                cid,
                message.type,
            )
            return
        if not call.future.done():
            call.rpc._settle(call, message)

    def fail_all(
        self, make_error: Callable[[_Call], BaseException], rpc: RPC | None = None
    ) -> None:
        """Fail the pending calls (of ``rpc`` only, when given)."""
        if rpc is None:
            calls = list(self.pending.values())
            self.pending.clear()
        else:
            calls = [call for call in self.pending.values() if call.rpc is rpc]
            for cid in [cid for cid, call in self.pending.items() if call.rpc is rpc]:
                del self.pending[cid]
        for call in calls:
            call.fail(make_error(call))

    async def close(self) -> None:
        """Stop consuming replies (and delete the reply queue)."""
        self.closed = True
        self.stop_deadlines()
        if _direct_paths.get(id(self.channel)) is self:
            del _direct_paths[id(self.channel)]
        paths = _watched.get(self.channel.connection)
        if paths is not None:
            paths.discard(self)
        tag, self.consumer_tag = self.consumer_tag, None
        if tag is None or self.channel.is_closed or self.channel.connection.is_closed:
            return
        if self._on_close is not None:
            self.channel.remove_close_listener(self._on_close)
        if self._on_error is not None:
            self.channel.remove_error_listener(self._on_error)
        if self._on_return is not None:
            self.channel.remove_return_listener(self._on_return)
        try:
            await self.channel.cancel(tag)
            if not self.direct:
                await self.channel.queue_delete(self.address)
        except HutchError as exc:
            log.debug("closing the RPC reply path: %s", exc)


def _path_returned(ref: weakref.ref[_ReplyPath], returned: Unroutable) -> None:
    path = ref()
    cid = getattr(returned.message, "correlation_id", None)
    if path is None or cid is None:
        return
    call = path.pending.pop(cid, None)
    if call is not None:
        call.fail(_no_callee(call.name, returned))


def _path_channel_closed(ref: weakref.ref[_ReplyPath], channel: Any, error: Any) -> None:
    path = ref()
    if path is None:
        return
    if _direct_paths.get(id(path.channel)) is path:
        del _direct_paths[id(path.channel)]
    path.closed = True
    path.consumer_tag = None
    _fail_soon(path, error)


def _path_channel_error(ref: weakref.ref[_ReplyPath], channel: Any, error: Any) -> None:
    """The broker closed the channel of a direct reply path: replies to the calls pending on
    it are lost (a robust channel reopens, but under a new direct reply-to address)."""
    path = ref()
    if path is not None and not path.closed:
        _fail_soon(path, error)


def _fail_soon(path: _ReplyPath, error: BaseException | None) -> None:
    reason = f" ({error})" if error else ""

    def make_error(call: _Call) -> BaseException:
        if isinstance(error, NotFound) and error.method == "Basic.Publish" and call.rpc.exchange:
            # A call to the custom exchange after the broker auto-deleted it.
            return _no_exchange(call.name, call.rpc.exchange, error, this_call=False)
        return ConnectionClosed(
            f"the channel of this RPC object was closed{reason} while the call to {call.name!r} "
            "waited for its reply; the callee may or may not have run it"
        )

    # One loop step later: a call whose publish made the broker close a channel with
    # publisher confirms gets the more precise error from its confirm future, whose callbacks
    # were scheduled first.
    asyncio.get_running_loop().call_soon(path.fail_all, make_error)


# The reply paths on each connection, failed together when it drops: one disconnect callback
# per connection, as a connection cannot forget its callbacks and RPC objects may come and go.
_watched: weakref.WeakKeyDictionary[Connection, weakref.WeakSet[_ReplyPath]] = (
    weakref.WeakKeyDictionary()
)


def _watch_connection(path: _ReplyPath) -> None:
    connection = path.channel.connection
    paths = _watched.get(connection)
    if paths is None:
        paths = weakref.WeakSet()
        _watched[connection] = paths
        connection.add_disconnect_callback(functools.partial(_connection_lost, paths))
        connection.add_reconnect_callback(functools.partial(_reconnected, paths))
    paths.add(path)


async def _reconnected(paths: weakref.WeakSet[_ReplyPath], connection: Any) -> None:
    # The channel restored each reply queue, but its binding to rpc.dlx was made on a channel
    # that is gone: make it again.
    for path in list(paths):
        if not path.closed and not path.direct:
            try:
                await path.bind_dlx()
            except HutchError as exc:
                log.warning("could not bind the reply queue again after reconnecting: %s", exc)


def _connection_lost(paths: weakref.WeakSet[_ReplyPath], connection: Any, error: Any) -> None:
    for path in list(paths):
        if path.closed:
            continue
        path.fail_all(
            lambda call: ConnectionLost(
                f"the connection was lost ({error}) while the call to {call.name!r} waited for "
                "its reply; the callee may or may not have run it: call again if that is safe"
            )
        )


# The direct reply-to path of each channel, shared by the RPC objects on that channel.
_direct_paths: dict[int, _ReplyPath] = {}


def _direct_path(channel: Channel) -> _ReplyPath:
    path = _direct_paths.get(id(channel))
    if path is None or path.closed or path.channel is not channel:
        path = _ReplyPath(channel, direct=True)
        _direct_paths[id(channel)] = path
    return path


class _Route:
    __slots__ = ("name", "routing_key", "func", "is_async", "consumer_tag")

    def __init__(self, name: str, routing_key: str, func: Callable[..., Any]) -> None:
        self.name = name
        self.routing_key = routing_key
        self.func = func
        self.is_async = is_async(func)  # awaited in the call's task; else run in a thread
        self.consumer_tag: str | None = None


class RPC(Serializing):
    """Remote procedure calls over the broker; create one with ``await RPC.create(channel)``.

    One object can be a caller (``call``, ``proxy``), a callee (``register``), or both.

    Args:
        channel: the channel calls are published on and replies consumed from; when it has
            publisher confirms and the reply path is direct, calls and replies use a channel
            without them that this object opens on the same connection (and closes with it).
            A callee opens a channel of its own on the same connection for its consumers.
        exchange: a direct exchange to publish calls to (declared auto-delete, as aio-pika does);
            queues are then named ``"<exchange>::<name>"``. Default: the default exchange.
        timeout: the deadline of a call that does not pass ``timeout=``, in seconds (default 60);
            ``None`` waits forever.
        reply_path: ``"direct"`` (default): RabbitMQ's direct reply-to; ``"queue"``: an exclusive
            reply queue, bound to ``rpc.dlx`` so calls that expire in a queue come back at once.
        concurrency: how many calls of each registered name this callee runs at once (the
            consumer's prefetch). Default 32.
        executor: where plain (non-async) functions run; default: the loop's thread pool.
        exceptions: exception classes to re-create when a callee raises one of them (matched by
            class name, as the wire carries only the name). Builtin exceptions always are.
        host_exceptions: log, with its traceback, every exception a registered function raises.
    """

    CONTENT_TYPE = "application/json"
    DLX_NAME = DLX_NAME
    DELIVERY_MODE = 1

    _loop: asyncio.AbstractEventLoop  # set by create(), which runs in the loop

    def __init__(
        self,
        channel: Channel,
        *,
        exchange: str = "",
        timeout: float | None = DEFAULT_TIMEOUT,
        reply_path: ReplyPath = "direct",
        concurrency: int = DEFAULT_CONCURRENCY,
        executor: Executor | None = None,
        exceptions: Iterable[type[Exception]] = (),
        host_exceptions: bool = False,
    ) -> None:
        if reply_path not in ("direct", "queue"):
            raise ValueError(f"reply_path must be 'direct' or 'queue', not {reply_path!r}")
        _check_timeout(timeout, "timeout")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a whole number, 1 or more, not {concurrency!r}")
        if not isinstance(exchange, str):
            raise TypeError(f"exchange must be a str, not {type(exchange).__name__}")
        self.channel = channel
        self.exchange = exchange
        self.timeout = timeout
        self.reply_path: ReplyPath = reply_path
        self.concurrency = concurrency
        self.executor = executor
        self.host_exceptions = host_exceptions
        self.proxy = Proxy(self.call)
        self._exceptions: dict[str, type[Exception]] = {}
        for cls in exceptions:
            self._register_exception(cls)
        self._state = _State.NEW
        self._replies: _ReplyPath | None = None
        self._caller_channel = channel  # where calls go: see _start
        self._caller_closing: asyncio.Future[None] | None = None
        self._callee_channel: Channel | None = None
        self._callee_lock = asyncio.Lock()
        self._routes: dict[str, _Route] = {}
        self._funcs: dict[Callable[..., Any], _Route] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._close_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state.value} on {self.channel!r}>"

    def _register_exception(self, cls: type[Exception]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise TypeError(f"exceptions= takes Exception subclasses, not {cls!r}")
        known = self._exceptions.get(cls.__name__)
        if known is not None and known is not cls:
            raise ValueError(
                f"two exception classes are named {cls.__name__!r} ({known!r} and {cls!r}); "
                "the wire carries only the name, so list one of them"
            )
        self._exceptions[cls.__name__] = cls

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def create(cls, channel: Channel, **options: Any) -> Self:
        """Make an RPC object on ``channel`` and start its reply path (see the class for the
        options)."""
        rpc = cls(channel, **options)
        warn = getattr(rpc, "_warn_pickle", None)
        if warn is not None:
            warn()  # points the warning at the caller of create()
        await rpc._start()
        return rpc

    async def _start(self) -> None:
        if self._state is not _State.NEW:
            return
        self._loop = asyncio.get_running_loop()
        channel = self.channel
        if channel.publisher_confirms and self.reply_path == "direct":
            # Calls go out on a channel of this object's own, without publisher confirms: a
            # call needs none before its reply can come (a returned call still fails at once,
            # by its correlation id), and a confirm per call costs the caller a second wake-up
            # per call that measurably slows every round trip (docs/benchmarks.md). A channel
            # error fails every call waiting on it, as their direct replies are lost anyway.
            # (With a reply queue, replies outlive a channel error: there the confirm says
            # which call the broker refused, and the others wait on.)
            channel = await channel.connection.channel(publisher_confirms=False)
        self._caller_channel = channel
        if channel is not self.channel:
            self.channel.add_close_listener(self._on_channel_closed)
        try:
            if self.exchange:
                # On the calls' channel, so that it declares the exchange again when it
                # reopens after publishing to the exchange once the broker auto-deleted it.
                await channel.exchange_declare(self.exchange, "direct", auto_delete=True)
            path = _direct_path(channel) if self.reply_path == "direct" else None
            if path is None:
                path = _ReplyPath(channel, direct=False)
            path.users += 1
            try:
                await path.open()
            except BaseException:
                path.users -= 1
                if path.users == 0:
                    await path.close()
                raise
        except BaseException:
            if channel is not self.channel:
                self.channel.remove_close_listener(self._on_channel_closed)
                self._caller_channel = self.channel
                await _close_quietly(channel)
            raise
        self._replies = path
        self._state = _State.OPEN

    def _on_channel_closed(self, channel: Any, error: BaseException | None) -> None:
        """The channel given to ``create`` is closed for good: so is the one this object
        opened for its calls (whose close fails the calls waiting on it)."""
        if not self._caller_channel.is_closed:
            self._caller_closing = asyncio.ensure_future(_close_quietly(self._caller_channel))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def is_closed(self) -> bool:
        return self._state in (_State.CLOSING, _State.CLOSED)

    @property
    def in_flight(self) -> int:
        """How many calls of this object wait for their reply right now."""
        path = self._replies
        if path is None:
            return 0
        return sum(1 for call in path.pending.values() if call.rpc is self)

    async def close(self, *, timeout: float = 5.0) -> None:
        """Stop serving and calling; idempotent.

        The callee's consumers are cancelled first; functions already running get up to
        ``timeout`` seconds to finish and reply, then are cancelled (their calls go back to the
        queue for another callee). Calls waiting for replies fail with ``ConnectionClosed``.
        """
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close(timeout))
        await asyncio.shield(self._close_task)

    async def _close(self, timeout: float) -> None:
        self._state = _State.CLOSING
        callee = self._callee_channel
        routes = list(self._routes.values())
        self._routes.clear()
        self._funcs.clear()
        path = self._replies
        if path is not None:
            path.fail_all(
                lambda call: ConnectionClosed(
                    f"the RPC object was closed while the call to {call.name!r} waited for its "
                    "reply"
                ),
                rpc=self,
            )
        if callee is not None and not callee.is_closed:
            for route in routes:
                if route.consumer_tag is not None:
                    try:
                        await callee.cancel(route.consumer_tag)
                    except HutchError as exc:
                        log.debug("cancelling the consumer of %r: %s", route.name, exc)
        if path is not None:
            path.users -= 1
            if path.users <= 0:
                await path.close()
        if self._caller_channel is not self.channel:
            self.channel.remove_close_listener(self._on_channel_closed)
            await _close_quietly(self._caller_channel)
        if self._serving:
            _done, running = await asyncio.wait(set(self._serving), timeout=timeout)
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running, timeout=5)
        if callee is not None:
            try:
                await callee.close()
            except HutchError as exc:
                log.debug("closing the callee channel: %s", exc)
        self._state = _State.CLOSED

    # -- calling ----------------------------------------------------------------------------

    def _routing_key(self, name: str) -> str:
        return f"{self.exchange}::{name}" if self.exchange else name

    async def call(
        self,
        name: str,
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        expiration: float | None = None,
        priority: int = DEFAULT_PRIORITY,
        delivery_mode: int = DELIVERY_MODE,
    ) -> Any:
        """Call ``name(**kwargs)`` on a callee and return its result.

        Args:
            timeout: seconds to wait for the reply; default: the object's ``timeout`` (60 s
                unless set); ``None`` waits forever.
            expiration: seconds the call may wait in the queue before the broker drops it;
                default: the timeout.
            priority: the message priority (used by queues declared with ``x-max-priority``).

        Raises:
            CallTimeout: no reply within the timeout (or the call expired in its queue).
            Unroutable: no callee has registered ``name``.
            ConnectionLost: the connection went away before the reply came.
            ConnectionClosed: the RPC object (or its channel) was closed.
            RemoteError: the function raised an exception hutch does not re-create (builtin
                exceptions and the classes listed in ``exceptions=`` are raised as themselves).
            TypeError: ``kwargs`` cannot be serialized.
        """
        path = self._replies
        if path is None or self._state is not _State.OPEN:
            raise ConnectionClosed(
                f"this RPC object is {self._state.value}: use `await RPC.create(channel)` "
                "(and do not call after close())"
            )
        channel = self._caller_channel
        if self.channel.is_closed or channel.is_closed:
            raise ConnectionClosed(
                f"the channel of this RPC object is closed, so {name!r} cannot be called; open "
                "a channel and create the RPC object again (connect_robust restores channels)"
            )
        if timeout is DEFAULT:
            timeout = self.timeout
        elif timeout is not None:
            _check_timeout(timeout, "timeout")
        if expiration is None:
            expiration = timeout
        elif isinstance(expiration, bool) or not isinstance(expiration, (int, float)):
            raise TypeError(f"expiration must be seconds (a number), not {expiration!r}")
        if priority != DEFAULT_PRIORITY and (
            isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255
        ):
            raise ValueError(f"priority must be a whole number from 0 to 255, not {priority!r}")
        if kwargs is None:
            kwargs = {}
        elif not isinstance(kwargs, dict):
            raise TypeError(
                f"kwargs must be a dict of keyword arguments, not {type(kwargs).__name__}"
            )
        try:
            body = self.serialize(kwargs)
        except Exception as exc:
            raise TypeError(
                f"the arguments of {name!r} cannot be serialized as {self.CONTENT_TYPE}: {exc}"
            ) from exc
        cid = path.next_id()
        future: asyncio.Future[Any] = self._loop.create_future()
        call = _Call(self, name, future)
        message = Message(
            body,
            content_type=self.CONTENT_TYPE,
            correlation_id=cid,
            reply_to=path.address,
            headers=None if path.direct else {"From": path.address},
            priority=priority,
            delivery_mode=delivery_mode,
            expiration=expiration,
            timestamp=time.time(),
            type="call",
        )
        path.pending[cid] = call
        try:
            confirm = channel.publish_nowait(
                message, self._routing_key(name), exchange=self.exchange, mandatory=True
            )
        except BaseException:
            del path.pending[cid]
            raise
        if confirm.done():
            call.confirmed(confirm)
        else:
            confirm.add_done_callback(call.confirmed)
        try:
            if timeout is not None:
                path.add_deadline(call, timeout)
            return await future
        finally:
            path.pending.pop(cid, None)
            if not confirm.done() and isinstance(confirm, asyncio.Task):
                # The channel was reconnecting and the publish still waits: nobody wants it now.
                confirm.cancel()

    def _settle(self, call: _Call, message: IncomingMessage) -> None:
        """End ``call`` with the reply ``message``."""
        future = call.future
        kind = message.type
        if kind == "call":
            future.set_exception(
                CallTimeout(
                    f"the call to {call.name!r} expired in its queue before any callee took it "
                    "(the broker dead-lettered it back); the callees are busy or gone"
                )
            )
            return
        try:
            payload = self._decode(message.body, message.content_type)
        except DecodeError as exc:
            future.set_exception(DecodeError(f"the reply to {call.name!r} is unreadable: {exc}"))
            return
        if kind == "result":
            future.set_result(payload)
        elif kind == "error":
            future.set_exception(self._remote_exception(payload, call.name))
        else:
            future.set_exception(
                DecodeError(
                    f"the reply to {call.name!r} has type {kind!r}; an RPC reply has type "
                    "'result' or 'error'"
                )
            )

    def _remote_exception(self, payload: Any, name: str) -> BaseException:
        """The exception to raise for an error reply: re-created only from a known class."""
        if isinstance(payload, BaseException) and isinstance(self, PickleMixin):
            return payload  # aio-pika's pickle RPC sends the exception itself; the user opted in
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            return RemoteError(
                "?", f"the error reply to {name!r} is not in the RPC error format: {payload!r:.200}"
            )
        type_name = str(error.get("type", "?"))
        message = str(error.get("message", ""))
        raw_args = error.get("args")
        args = list(raw_args) if isinstance(raw_args, (list, tuple)) else []
        remote_tb = error.get("traceback")
        remote_tb = remote_tb if isinstance(remote_tb, str) else ""
        cls = self._exceptions.get(type_name) or _builtin_exception(type_name)
        if cls is not None:
            try:
                exc = cls(*args)
            except Exception:
                exc = None
            if exc is not None:
                note = f"raised by the callee of {name!r}"
                exc.add_note(f"{note}; remote traceback:\n{remote_tb}" if remote_tb else note)
                return exc
        return RemoteError(type_name, message, args, remote_tb)

    # -- serving ----------------------------------------------------------------------------

    async def _callee(self) -> Channel:
        async with self._callee_lock:
            channel = self._callee_channel
            if channel is None or channel.is_closed:
                connection: Connection = self.channel.connection
                # Replies need no confirms: a reply and the call's ack go out in order on this
                # channel, and a lost reply is a lost connection the caller already hears of.
                channel = await connection.channel(publisher_confirms=False)
                await channel.set_qos(self.concurrency)
                self._callee_channel = channel
            return channel

    async def register(self, name: str, func: Callable[..., Any], **queue_options: Any) -> None:
        """Serve calls of ``name`` with ``func`` (async, or plain: run in the executor).

        ``func`` takes keyword arguments only. ``queue_options`` go to the declaration of the
        queue (``durable``, ``exclusive``, ``auto_delete``, ``arguments``); the queue always gets
        ``x-dead-letter-exchange: rpc.dlx`` as aio-pika's callee declares it, so both can share
        it and expired calls reach aio-pika callers.

        Raises:
            ValueError: ``name`` (or ``func``) is already registered on this object.
            TypeError: an unknown queue option, or ``func`` is not callable.
        """
        if self._state is not _State.OPEN:
            raise ConnectionClosed(f"this RPC object is {self._state.value}; create a new one")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, not {name!r}")
        if not callable(func):
            raise TypeError(f"func must be callable, not {func!r}")
        unknown = set(queue_options) - _QUEUE_OPTIONS
        if unknown:
            raise TypeError(
                f"register() got unknown queue options {sorted(unknown)}; it takes "
                f"{sorted(_QUEUE_OPTIONS)}"
            )
        routing_key = self._routing_key(name)
        if routing_key in self._routes:
            raise ValueError(
                f"{name!r} is already registered on this RPC object (to "
                f"{self._routes[routing_key].func!r}); unregister it first"
            )
        if func in self._funcs:
            raise ValueError(
                f"{func!r} is already registered as {self._funcs[func].name!r}; "
                "unregister(func) takes it by the function, so register it once"
            )
        arguments = dict(queue_options.pop("arguments", None) or {})
        arguments["x-dead-letter-exchange"] = self.DLX_NAME
        route = _Route(name, routing_key, func)
        self._routes[routing_key] = route
        self._funcs[func] = route
        try:
            channel = await self._callee()
            if self.exchange:
                # Declared here too so that the channel restores it (before the binding) when
                # a reconnect finds it auto-deleted.
                await channel.exchange_declare(self.exchange, "direct", auto_delete=True)
            await channel.queue_declare(routing_key, arguments=arguments, **queue_options)
            if self.exchange:
                await channel.queue_bind(routing_key, self.exchange, routing_key)
            route.consumer_tag = await channel.consume(
                routing_key, functools.partial(self._on_call, route)
            )
        except BaseException:
            if self._routes.get(routing_key) is route:
                del self._routes[routing_key]
            if self._funcs.get(func) is route:
                del self._funcs[func]
            raise

    async def unregister(self, func: Callable[..., Any]) -> None:
        """Stop serving the name ``func`` was registered under (the queue stays, as in
        aio-pika, unless it was declared ``auto_delete``). Unknown functions are ignored."""
        route = self._funcs.pop(func, None)
        if route is None:
            return
        self._routes.pop(route.routing_key, None)
        channel = self._callee_channel
        if route.consumer_tag is not None and channel is not None and not channel.is_closed:
            await channel.cancel(route.consumer_tag)

    async def _on_call(self, route: _Route, message: IncomingMessage) -> None:
        # A coroutine, so that the channel runs it as a task it owns: closing the connection
        # cancels it as it does every consumer callback. close() waits for it first. (One
        # coroutine for the whole call: each frame more is felt in a call's round trip.)
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            kind = "result"
            try:
                kwargs = self._decode(message.body, message.content_type)
                if not isinstance(kwargs, dict):
                    raise TypeError(
                        f"the call's body must be a mapping of keyword arguments, not "
                        f"{type(kwargs).__name__}"
                    )
                if route.is_async:
                    result = await route.func(**kwargs)
                else:
                    result = await call_handler(route.func, kwargs, self.executor)
                try:
                    body = self.serialize(result)
                except Exception as exc:
                    raise TypeError(
                        f"the result of {route.name!r} ({type(result).__name__}) cannot be "
                        f"serialized as {self.CONTENT_TYPE}: {exc}"
                    ) from exc
            except Exception as exc:
                kind = "error"
                if self.host_exceptions:
                    log.exception("RPC function %r raised", route.name)
                else:
                    log.debug("RPC function %r raised %r", route.name, exc)
                try:
                    body = self._error_body(exc)
                except Exception:
                    log.exception(
                        "the error of %r cannot be serialized; the call is dropped", route.name
                    )
                    await message.reject(requeue=False)
                    return
            reply_to = message.reply_to
            if reply_to:
                reply = Message(
                    body,
                    content_type=self.CONTENT_TYPE,
                    correlation_id=message.correlation_id,
                    delivery_mode=message.delivery_mode,
                    type=kind,
                )
                sent = message.channel.publish_nowait(reply, reply_to)
                if sent.done():
                    _retrieve(sent)
                else:
                    sent.add_done_callback(_retrieve)
            else:
                log.debug("a call of %r had no reply_to: its %s is dropped", route.name, kind)
            await message.ack()
        finally:
            self._serving.discard(task)

    def _error_body(self, exc: Exception) -> bytes:
        """aio-pika JsonRPC's error body plus the traceback, as args allow."""
        text = "".join(traceback.format_exception(exc))
        if len(text) > _TRACEBACK_LIMIT:
            text = "...\n" + text[-_TRACEBACK_LIMIT:]
        error: dict[str, Any] = {
            "type": type(exc).__name__,
            "message": repr(exc),
            "args": list(exc.args),
            "traceback": text,
        }
        try:
            return self.serialize({"error": error})
        except Exception:
            error["args"] = [repr(arg) for arg in exc.args]
            return self.serialize({"error": error})


def _check_timeout(value: object, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what} must be a positive number of seconds or None, not {value!r}")


def _builtin_exception(name: str) -> type[Exception] | None:
    if name in _NOT_RECREATED:
        return None
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls
    return None


JsonRPC = RPC
"""aio-pika's name for the JSON RPC; in hutch JSON is the default, so it is ``RPC`` itself."""


class MsgpackRPC(MsgpackMixin, RPC):
    """RPC with msgpack bodies (``pip install hutch[msgpack]``)."""


class PickleRPC(PickleMixin, RPC):
    """RPC with pickle bodies, as aio-pika's default ``RPC``: ONLY between processes that trust
    each other completely, since unpickling a reply or a call runs code its sender chose.

    ``create`` warns with ``UnsafeSerializerWarning``.
    """
