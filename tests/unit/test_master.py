"""Master/Worker logic with no broker: a fake channel records what would go on the wire."""

from __future__ import annotations

import asyncio
import gc
import json
import types
from collections.abc import Awaitable
from typing import Any, cast

import msgpack
import pytest

import hutch
from hutch.abc import Channel
from hutch.message import _DONE
from hutch.patterns import (
    JsonMaster,
    Master,
    MsgpackMaster,
    NackMessage,
    PickleMaster,
    RejectMessage,
    Retry,
    UnsafeSerializerWarning,
    Worker,
)
from hutch.patterns.master import (
    HEADER_ATTEMPTS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TRACEBACK,
    HEADER_ERROR_TYPE,
)


class FakeChannel:
    """Records publishes; each confirm is a future the test resolves (or fails)."""

    number = 1
    publisher_confirms = True

    def __init__(self, *, auto_confirm: bool = True) -> None:
        self.auto_confirm = auto_confirm
        self.published: list[tuple[hutch.Message, str, bool]] = []
        self.confirms: list[asyncio.Future[None]] = []
        self._changed = asyncio.Event()

    async def wait_published(self, count: int) -> None:
        """Wait (at most a second) until ``count`` messages were published."""
        async with asyncio.timeout(1):
            while len(self.published) < count:
                self._changed.clear()
                await self._changed.wait()

    def publish_nowait(
        self, message: hutch.Message, routing_key: str = "", *, mandatory: bool = False
    ) -> asyncio.Future[None]:
        self.published.append((message, routing_key, mandatory))
        self._changed.set()
        confirm: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.auto_confirm:
            confirm.set_result(None)
        self.confirms.append(confirm)
        return confirm

    async def publish(
        self, message: hutch.Message, routing_key: str = "", *, mandatory: bool = False
    ) -> None:
        await self.publish_nowait(message, routing_key, mandatory=mandatory)


class FakeMessage:
    """A delivery that records how it was settled."""

    def __init__(
        self,
        body: bytes,
        content_type: str | None = "application/json",
        headers: dict[str, Any] | None = None,
    ) -> None:
        self.body = body
        self.content_type = content_type
        self.content_encoding = None
        self.headers = headers
        self.delivery_mode = 2
        self.priority = None
        self.correlation_id = None
        self.reply_to = None
        self.message_id = "m-1"
        self.timestamp = None
        self.type = None
        self.app_id = None
        self.settled: list[tuple[str, bool | None]] = []

    def ack(self) -> Awaitable[None]:
        """As ``IncomingMessage.ack``: settles at once, returns an already-done awaitable."""
        self.settled.append(("ack", None))
        return _DONE

    async def nack(self, *, requeue: bool = True) -> None:
        self.settled.append(("nack", requeue))

    async def reject(self, *, requeue: bool = True) -> None:
        self.settled.append(("reject", requeue))


def make_master(channel: FakeChannel, cls: type[Master] = Master) -> Master:
    return cls(cast(Channel, channel))


def make_worker(master: Master, func: Any, retry: Retry | None = None) -> Worker:
    return Worker(
        master,
        master.channel,
        "q",
        func,
        retry=retry or Retry(),
        executor=None,
        close_timeout=1.0,
    )


async def deliver(worker: Worker, message: FakeMessage) -> None:
    await worker._on_message(cast(hutch.IncomingMessage, message))


# -- the retry policy ---------------------------------------------------------------------------


def test_retry_delays_grow_by_the_factor_up_to_the_cap() -> None:
    """Retry n waits delay * factor ** (n - 1) seconds, never more than max_delay."""
    retry = Retry(attempts=6, delay=0.5, factor=3, max_delay=10)
    assert [retry.delay_ms(n) for n in range(1, 7)] == [500, 1500, 4500, 10000, 10000, 10000]


@pytest.mark.parametrize(
    "options",
    [{"attempts": -1}, {"attempts": 1.5}, {"delay": 0}, {"factor": 0.5}, {"max_delay": 0.1}],
)
def test_retry_refuses_nonsense(options: dict[str, Any]) -> None:
    """A retry policy that cannot work is refused when it is made."""
    with pytest.raises(ValueError, match="Retry"):
        Retry(**options)


def test_worker_has_one_retry_queue_per_distinct_delay() -> None:
    """Retry queues are named ``<queue>.retry.<ms>``, one per distinct (capped) delay."""
    master = make_master(FakeChannel())
    worker = make_worker(master, print, Retry(attempts=4, delay=1, factor=2, max_delay=2))
    assert worker.retry_queues == ("q.retry.1000", "q.retry.2000")
    assert worker.dead_letter_queue == "q.dead"


# -- the master ---------------------------------------------------------------------------------


async def test_create_task_publishes_mandatory_persistent_json() -> None:
    """A task goes to the default exchange, routing key = name, mandatory, persistent, JSON."""
    channel = FakeChannel()
    master = make_master(channel)
    await master.proxy.resize.image(path="ü.png")
    message, routing_key, mandatory = channel.published[0]
    assert (routing_key, mandatory) == ("resize.image", True)
    assert message.content_type == "application/json"
    assert message.delivery_mode == 2
    assert json.loads(message.body) == {"path": "ü.png"}


async def test_create_task_accepts_any_mapping_and_no_kwargs() -> None:
    """kwargs may be any mapping, or omitted (an empty object)."""
    channel = FakeChannel()
    master = make_master(channel)
    await master.create_task("t", types.MappingProxyType({"a": 1}))
    await master.create_task("t")
    assert [json.loads(m.body) for m, _, _ in channel.published] == [{"a": 1}, {}]


async def test_create_task_refuses_bad_kwargs_and_options() -> None:
    """Non-mapping kwargs, positional args, content_type or unknown options are a TypeError."""
    master = make_master(FakeChannel())
    with pytest.raises(TypeError, match="mapping"):
        await master.create_task("t", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="CONTENT_TYPE"):
        await master.create_task("t", {}, content_type="text/plain")
    with pytest.raises(TypeError, match="priorty"):
        await master.create_task("t", {}, priorty=1)
    with pytest.raises(TypeError, match="positional"):
        await master.proxy.t(1)


async def test_create_task_options_may_override_delivery_mode() -> None:
    """``delivery_mode`` given to create_task wins over the persistent default."""
    channel = FakeChannel()
    await make_master(channel).create_task("t", {}, delivery_mode=1, priority=2)
    message = channel.published[0][0]
    assert (message.delivery_mode, message.priority) == (1, 2)


async def test_create_tasks_sends_every_task_before_awaiting_a_confirm() -> None:
    """The batch form writes every task before any confirm, and returns after the last."""
    channel = FakeChannel(auto_confirm=False)
    master = make_master(channel)
    batch = asyncio.ensure_future(master.create_tasks("t", [{"n": n} for n in range(50)]))
    await channel.wait_published(50)
    assert not batch.done()
    for confirm in channel.confirms[:-1]:
        confirm.set_result(None)
    await asyncio.sleep(0)
    assert not batch.done()
    channel.confirms[-1].set_result(None)
    await asyncio.wait_for(batch, 1)


async def test_cancelled_create_tasks_leaves_no_unretrieved_confirm_error() -> None:
    """Cancelling a batch mid-wait still reads the confirms' errors when they come, so asyncio
    never reports "Future exception was never retrieved"."""
    channel = FakeChannel(auto_confirm=False)
    master = make_master(channel)
    batch = asyncio.ensure_future(master.create_tasks("t", [{"n": n} for n in range(3)]))
    await channel.wait_published(3)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        for confirm in channel.confirms:
            confirm.set_exception(hutch.ConnectionLost("gone"))
        del confirm
        channel.confirms.clear()
        await asyncio.sleep(0)  # the done callbacks run
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_create_tasks_serializes_the_whole_batch_before_sending() -> None:
    """A task that cannot be serialized fails the batch before any task is sent."""
    channel = FakeChannel()
    with pytest.raises(TypeError):
        await make_master(channel).create_tasks("t", [{"n": 1}, {"n": object()}])
    assert channel.published == []


def test_master_refuses_a_channel_without_confirms() -> None:
    """A channel without publisher confirms is refused: create_task could not know the outcome."""
    channel = FakeChannel()
    channel.publisher_confirms = False
    with pytest.raises(ValueError, match="publisher confirms"):
        make_master(channel)


def test_json_master_is_master() -> None:
    """aio-pika users' ``JsonMaster`` is hutch's JSON ``Master``."""
    assert JsonMaster is Master


async def test_msgpack_master_speaks_msgpack() -> None:
    """MsgpackMaster labels and encodes tasks as msgpack."""
    channel = FakeChannel()
    await make_master(channel, MsgpackMaster).create_task("t", {"a": b"\x00"})
    message = channel.published[0][0]
    assert message.content_type == "application/msgpack"
    assert msgpack.loads(message.body) == {"a": b"\x00"}


def test_pickle_master_warns_when_created() -> None:
    """PickleMaster is opt-in and loud: creating one warns that it runs code from the queue."""
    with pytest.warns(UnsafeSerializerWarning, match="unpickles"):
        master = make_master(FakeChannel(), PickleMaster)
    assert master.CONTENT_TYPE == "application/python-pickle"


async def test_seed_style_subclass_changes_the_serializer_both_ways() -> None:
    """A seed-style subclass's serializer is used for created tasks and decoded ones."""

    class ReversedJson(Master):
        CONTENT_TYPE = "application/x-reversed-json"

        def serialize(self, data: Any) -> bytes:
            return json.dumps(data).encode()[::-1]

        def deserialize(self, data: bytes) -> Any:
            return json.loads(data[::-1])

    channel = FakeChannel()
    master = make_master(channel, ReversedJson)
    await master.create_task("t", {"x": 1})
    sent = channel.published[0][0]
    assert sent.content_type == "application/x-reversed-json"
    assert sent.body == b'{"x": 1}'[::-1]
    got: list[dict[str, Any]] = []

    async def handler(**kwargs: Any) -> None:
        got.append(kwargs)

    message = FakeMessage(sent.body, sent.content_type)
    await deliver(make_worker(master, handler), message)
    assert got == [{"x": 1}]
    assert message.settled == [("ack", None)]


# -- the worker ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (RejectMessage(requeue=False), ("reject", False)),
        (RejectMessage(requeue=True), ("reject", True)),
        (NackMessage(requeue=False), ("nack", False)),
        (NackMessage(requeue=True), ("nack", True)),
        (RejectMessage(), ("reject", False)),
    ],
)
async def test_reject_and_nack_settle_as_raised(
    raised: Exception, expected: tuple[str, bool]
) -> None:
    """RejectMessage → basic.reject, NackMessage → basic.nack, with their requeue flag."""
    channel = FakeChannel()

    async def handler(**kwargs: Any) -> None:
        raise raised

    message = FakeMessage(b"{}")
    await deliver(make_worker(make_master(channel), handler), message)
    assert message.settled == [expected]
    assert channel.published == []


async def test_retry_is_published_and_confirmed_before_the_task_is_acked() -> None:
    """The retry copy is confirmed before the original task is acked."""
    channel = FakeChannel(auto_confirm=False)

    async def failing(**kwargs: Any) -> None:
        raise KeyError("k")

    message = FakeMessage(b'{"n": 1}', headers={"mine": "kept"})
    handling = asyncio.ensure_future(deliver(make_worker(make_master(channel), failing), message))
    await channel.wait_published(1)
    copy, routing_key, mandatory = channel.published[0]
    assert (routing_key, mandatory) == ("q.retry.1000", True)
    assert copy.body == b'{"n": 1}'
    assert copy.message_id == "m-1"
    headers = copy.headers or {}
    assert headers["mine"] == "kept"
    assert headers[HEADER_ATTEMPTS] == 1
    assert headers[HEADER_ERROR_TYPE] == "KeyError"
    assert message.settled == []
    channel.confirms[0].set_result(None)
    await asyncio.wait_for(handling, 1)
    assert message.settled == [("ack", None)]


async def test_retries_follow_the_attempt_header_then_dead_letter() -> None:
    """The attempt header picks the delay; past the last, dead-letter and re-raise."""
    channel = FakeChannel()
    retry = Retry(attempts=2, delay=1, factor=3)

    async def failing(**kwargs: Any) -> None:
        raise RuntimeError("still broken")

    worker = make_worker(make_master(channel), failing, retry)
    await deliver(worker, FakeMessage(b"{}", headers={HEADER_ATTEMPTS: 1}))
    assert channel.published[-1][1] == "q.retry.3000"
    with pytest.raises(RuntimeError, match="still broken") as caught:
        await deliver(worker, FakeMessage(b"{}", headers={HEADER_ATTEMPTS: 2}))
    dead, routing_key, _ = channel.published[-1]
    assert routing_key == "q.dead"
    assert (dead.headers or {})[HEADER_ATTEMPTS] == 3
    assert (dead.headers or {})[HEADER_ERROR_MESSAGE] == "still broken"
    assert "'q.dead'" in caught.value.__notes__[-1]


async def test_copy_not_confirmed_leaves_the_task_unacked() -> None:
    """A retry copy lost with the connection leaves the task unacked, for redelivery."""
    channel = FakeChannel(auto_confirm=False)

    async def failing(**kwargs: Any) -> None:
        raise ValueError("x")

    message = FakeMessage(b"{}")
    handling = asyncio.ensure_future(deliver(make_worker(make_master(channel), failing), message))
    await channel.wait_published(1)
    channel.confirms[0].set_exception(hutch.ConnectionLost("gone"))
    await asyncio.wait_for(handling, 1)
    assert message.settled == []


async def test_dead_letter_headers_are_bounded() -> None:
    """A huge error message and traceback are cut so the headers fit in one frame."""
    channel = FakeChannel()

    def recurse(n: int) -> None:
        if n == 0:
            raise ValueError("m" * 100_000)
        recurse(n - 1)

    def failing(**kwargs: Any) -> None:
        recurse(300)

    with pytest.raises(ValueError, match="mmm"):
        await deliver(
            make_worker(make_master(channel), failing, Retry(attempts=0)), FakeMessage(b"{}")
        )
    headers = channel.published[-1][0].headers or {}
    assert len(headers[HEADER_ERROR_MESSAGE]) == 2000
    assert len(headers[HEADER_ERROR_TRACEBACK]) <= 8010
    assert "ValueError: mmm" in headers[HEADER_ERROR_TRACEBACK]
    assert "in recurse" in headers[HEADER_ERROR_TRACEBACK]


@pytest.mark.parametrize("content_type", [None, "application/json"])
async def test_missing_content_type_is_accepted(content_type: str | None) -> None:
    """A task without a content type is decoded with the master's serializer."""
    got: list[dict[str, Any]] = []

    async def handler(**kwargs: Any) -> None:
        got.append(kwargs)

    await deliver(
        make_worker(make_master(FakeChannel()), handler), FakeMessage(b'{"a": 1}', content_type)
    )
    assert got == [{"a": 1}]


async def test_sync_handler_runs_in_another_thread() -> None:
    """A plain function handler runs in the thread pool, not on the event loop's thread."""
    import threading

    threads: list[int] = []

    def handler(**kwargs: Any) -> None:
        threads.append(threading.get_ident())

    message = FakeMessage(b"{}")
    await deliver(make_worker(make_master(FakeChannel()), handler), message)
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()
    assert message.settled == [("ack", None)]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"prefetch_count": 0}, ValueError),
        ({"close_timeout": -1}, ValueError),
        ({"timeout": 5}, TypeError),
    ],
)
async def test_create_worker_refuses_bad_options_before_opening_a_channel(
    options: dict[str, Any], error: type[Exception]
) -> None:
    """Bad worker options are refused up front (the fake channel has no connection to use)."""
    master = make_master(FakeChannel())
    with pytest.raises(error):
        await master.create_worker("q", print, **options)


async def test_handler_leaking_cancelled_error_is_a_failure_not_a_stuck_task() -> None:
    """A CancelledError the handler lets out is retried like a failure, not left unsettled."""
    channel = FakeChannel()

    async def handler(**kwargs: Any) -> None:
        inner = asyncio.ensure_future(asyncio.sleep(10))
        inner.cancel()
        await inner

    message = FakeMessage(b"{}")
    await deliver(make_worker(make_master(channel), handler), message)
    assert channel.published[0][1] == "q.retry.1000"
    assert (channel.published[0][0].headers or {})[HEADER_ERROR_TYPE] == "RuntimeError"
    assert message.settled == [("ack", None)]


async def test_cancelling_the_handling_leaves_the_task_to_the_broker() -> None:
    """Cancelling the handling (a closing worker) neither acks nor retries the task."""
    channel = FakeChannel()
    started = asyncio.Event()

    async def handler(**kwargs: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    message = FakeMessage(b"{}")
    handling = asyncio.ensure_future(deliver(make_worker(make_master(channel), handler), message))
    await asyncio.wait_for(started.wait(), 1)
    handling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handling
    assert message.settled == []
    assert channel.published == []


async def test_copy_refused_by_the_broker_requeues_the_task_after_a_pause() -> None:
    """A retry copy the broker refuses requeues the task, after the retry delay."""
    channel = FakeChannel(auto_confirm=False)

    async def failing(**kwargs: Any) -> None:
        raise ValueError("x")

    message = FakeMessage(b"{}")
    worker = make_worker(make_master(channel), failing, Retry(attempts=1, delay=0.01))
    handling = asyncio.ensure_future(deliver(worker, message))
    await channel.wait_published(1)
    loop = asyncio.get_running_loop()
    refused_at = loop.time()
    channel.confirms[0].set_exception(hutch.PublishNacked("refused"))
    await asyncio.wait_for(handling, 1)
    assert loop.time() - refused_at >= 0.009
    assert message.settled == [("nack", True)]
