"""Master/Worker behaviour against a broker: what the issue's guarantees promise, one test each.

Every test here runs against the real RabbitMQ the suite starts; those that do not depend on
RabbitMQ-only features also run against the embedded broker (``memory://``) once it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import runpy
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.patterns import Master, NackMessage, RejectMessage, Retry
from hutch.patterns.master import (
    DEFAULT_PREFETCH,
    HEADER_ATTEMPTS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TRACEBACK,
    HEADER_ERROR_TYPE,
    HEADER_QUEUE,
    Worker,
)

TRANSPORTS = ["rabbitmq"]
if importlib.util.find_spec("hutch.memory") is not None and hasattr(
    importlib.import_module("hutch.memory"), "connect_memory"
):
    TRANSPORTS.append("memory")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WAIT = 10.0  # bound on any single wait for the broker; generous for a loaded machine
FAST = Retry(attempts=2, delay=0.05, factor=2.0)


class Boom(Exception):
    """A handler's own error type, to see its qualified name in the dead-letter headers."""


class Recorder:
    """A task handler that records each task's ``i`` and sets ``done`` after ``count``."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.handled: list[int] = []
        self.done = asyncio.Event()

    async def __call__(self, *, i: int) -> None:
        self.handled.append(i)
        if len(self.handled) == self.count:
            self.done.set()


@pytest.fixture(params=TRANSPORTS)
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    url: str = request.getfixturevalue("amqp_url")
    return url


@pytest.fixture
async def connection(broker_url: str) -> AsyncIterator[hutch.Connection]:
    conn = await hutch.connect(broker_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def master(connection: hutch.Connection, name: str) -> AsyncIterator[Master]:
    """A Master on its own channel; the test's queues and their side queues are deleted after."""
    master = Master(await connection.channel())
    yield master
    await master.close()
    channel = await connection.channel()
    delays = (50, 100, 1000, 2000, 4000)  # FAST's and Retry()'s
    for queue in (name, f"{name}.dead", *(f"{name}.retry.{ms}" for ms in delays)):
        await channel.queue_delete(queue)
    await channel.close()


async def next_message(
    channel: hutch.Channel, queue: str, timeout: float = WAIT
) -> hutch.IncomingMessage:
    """The next message a consumer of ``queue`` gets (acked), waiting at most ``timeout``."""
    got: asyncio.Future[hutch.IncomingMessage] = asyncio.get_running_loop().create_future()

    async def on_message(message: hutch.IncomingMessage) -> None:
        await message.ack()
        if not got.done():
            got.set_result(message)

    tag = await channel.consume(queue, on_message)
    try:
        return await asyncio.wait_for(got, timeout)
    finally:
        await channel.cancel(tag)


def collector(
    count: int,
) -> tuple[Callable[..., Any], list[dict[str, Any]], asyncio.Event]:
    """An async handler recording its kwargs, and an event set once it saw ``count`` tasks."""
    seen: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def handler(**kwargs: Any) -> None:
        seen.append(kwargs)
        if len(seen) >= count:
            done.set()

    return handler, seen, done


# -- the master's side ---------------------------------------------------------------------------


async def test_task_is_a_persistent_json_message_on_the_default_exchange(
    master: Master, name: str
) -> None:
    """A task is JSON kwargs, persistent, on the default exchange with the queue as routing key."""
    await master.channel.queue_declare(name)
    await master.create_task(name, kwargs={"task_id": 1, "text": "héllo"})
    message = await master.channel.get(name, no_ack=True)
    assert message is not None
    assert json.loads(message.body) == {"task_id": 1, "text": "héllo"}
    assert message.content_type == "application/json"
    assert message.delivery_mode == 2
    assert message.exchange == ""
    assert message.routing_key == name


async def test_proxy_attribute_path_names_the_queue(master: Master, name: str) -> None:
    """``proxy.<name>.sub(**kw)`` publishes ``kw`` to the queue ``"<name>.sub"``."""
    await master.channel.queue_declare(f"{name}.sub")
    try:
        await getattr(master.proxy, name).sub(x=1, y="z")
        message = await master.channel.get(f"{name}.sub", no_ack=True)
        assert message is not None
        assert json.loads(message.body) == {"x": 1, "y": "z"}
    finally:
        await master.channel.queue_delete(f"{name}.sub")


async def test_create_task_passes_message_options(master: Master, name: str) -> None:
    """``create_task(..., priority=, headers=, message_id=, expiration=)`` sets those properties."""
    await master.channel.queue_declare(name)
    await master.create_task(
        name, kwargs={}, priority=3, headers={"k": "v"}, message_id="m-1", expiration=60
    )
    message = await master.channel.get(name, no_ack=True)
    assert message is not None
    assert (message.priority, message.headers, message.message_id, message.expiration) == (
        3,
        {"k": "v"},
        "m-1",
        60,
    )
    assert message.delivery_mode == 2


async def test_task_nobody_can_receive_raises_unroutable(master: Master, name: str) -> None:
    """A task for a queue that does not exist raises ``Unroutable`` naming it, at the producer."""
    with pytest.raises(hutch.Unroutable, match=name) as caught:
        await master.create_task(name, kwargs={"x": 1})
    assert any("create_worker" in note for note in caught.value.__notes__)
    with pytest.raises(hutch.Unroutable, match="never_declared"):
        await master.proxy.never_declared(x=1)


async def test_create_task_returns_after_the_broker_confirmed(master: Master, name: str) -> None:
    """``create_task`` waits for the confirm: a task a full queue refuses raises PublishNacked."""
    await master.channel.queue_declare(
        name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    await master.create_task(name, kwargs={"n": 1})
    with pytest.raises(hutch.PublishNacked):
        await master.create_task(name, kwargs={"n": 2})
    with pytest.raises(hutch.PublishNacked) as caught:
        await master.create_tasks(name, [{"n": 3}, {"n": 4}])
    assert "2 of 2 tasks were not enqueued (indexes 0, 1)" in caught.value.__notes__[-1]
    info = await master.channel.queue_declare(name, passive=True)
    assert info.message_count == 1


async def test_master_refuses_a_channel_without_publisher_confirms(
    connection: hutch.Connection,
) -> None:
    """A Master needs confirms to know a task was taken: a channel without them is refused."""
    channel = await connection.channel(publisher_confirms=False)
    with pytest.raises(ValueError, match="publisher confirms"):
        Master(channel)


async def test_batch_enqueues_every_task(master: Master, name: str) -> None:
    """``create_tasks`` enqueues each task of a batch, in order, before it returns."""
    await master.channel.queue_declare(name)
    await master.create_tasks(name, ({"n": n} for n in range(2500)))
    info = await master.channel.queue_declare(name, passive=True)
    assert info.message_count == 2500
    first = await master.channel.get(name, no_ack=True)
    assert first is not None
    assert json.loads(first.body) == {"n": 0}


async def test_batch_to_a_missing_queue_raises_unroutable(master: Master, name: str) -> None:
    """A batch for a queue that does not exist raises ``Unroutable`` after every task settled."""
    with pytest.raises(hutch.Unroutable, match=name) as caught:
        await master.create_tasks(name, [{"n": 1}, {"n": 2}, {"n": 3}])
    assert "3 of 3 tasks were not enqueued" in caught.value.__notes__[-1]


# -- the worker's side ---------------------------------------------------------------------------


async def test_worker_runs_each_task_with_its_kwargs(master: Master, name: str) -> None:
    """Tasks from the proxy, ``create_task`` and ``create_tasks`` each reach the handler once."""
    handler, seen, done = collector(4)
    await master.create_worker(name, handler)
    await getattr(master.proxy, name)(n=1)
    await master.create_task(name, kwargs={"n": 2})
    await master.create_tasks(name, [{"n": 3}, {"n": 4}])
    await asyncio.wait_for(done.wait(), WAIT)
    assert sorted(kw["n"] for kw in seen) == [1, 2, 3, 4]


async def test_worker_acks_only_after_the_handler_returned(
    broker_url: str, master: Master, name: str
) -> None:
    """A task whose handler is still running when the worker's connection goes comes back."""
    started = asyncio.Event()

    async def never_returns(**kwargs: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    worker_connection = await hutch.connect(broker_url)
    worker_master = Master(await worker_connection.channel())
    await worker_master.create_worker(name, never_returns)
    await master.create_task(name, kwargs={"n": 1})
    await asyncio.wait_for(started.wait(), WAIT)
    await worker_connection.close()
    again = await next_message(master.channel, name)
    assert again.redelivered
    assert json.loads(again.body) == {"n": 1}


async def test_failing_task_is_retried_with_backoff_then_dead_lettered(
    master: Master, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing task runs 1 + attempts times, backing off, then is dead-lettered with details."""
    calls: list[float] = []

    async def failing(*, n: int) -> None:
        calls.append(time.monotonic())
        raise Boom(f"cannot do {n}")

    worker = await master.create_worker(name, failing, retry=FAST)
    assert worker.retry_queues == (f"{name}.retry.50", f"{name}.retry.100")
    caplog.set_level(logging.WARNING)
    await master.create_task(name, kwargs={"n": 42}, message_id="task-42")
    dead = await next_message(master.channel, worker.dead_letter_queue)

    assert len(calls) == 3  # no hot loop: exactly the first run and two retries
    assert calls[1] - calls[0] >= 0.045  # the retry queue's TTL (ms granularity)
    assert calls[2] - calls[1] >= 0.095  # doubled
    assert json.loads(dead.body) == {"n": 42}
    assert dead.content_type == "application/json"
    assert dead.message_id == "task-42"
    headers = dead.headers or {}
    assert headers[HEADER_ATTEMPTS] == 3
    assert headers[HEADER_ERROR_TYPE] == f"{__name__}.Boom"
    assert headers[HEADER_ERROR_MESSAGE] == "cannot do 42"
    assert 'raise Boom(f"cannot do {n}")' in headers[HEADER_ERROR_TRACEBACK]
    assert headers[HEADER_QUEUE] == name
    retries = [r for r in caplog.records if r.levelno == logging.WARNING and "retrying" in r.msg]
    assert len(retries) == 2
    await worker.close()
    # the final failure left the consumer callback, so the transport logged it with its traceback
    escaped = [r.exc_info[1] for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert len(escaped) == 1
    assert isinstance(escaped[0], Boom)
    info = await master.channel.queue_declare(name, passive=True)
    assert info.message_count == 0


async def test_zero_attempts_dead_letters_at_the_first_failure(master: Master, name: str) -> None:
    """With ``Retry(attempts=0)`` a failing task goes to the dead-letter queue after one run."""
    calls = 0

    def failing(**kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("no")

    worker = await master.create_worker(name, failing, retry=Retry(attempts=0))
    assert worker.retry_queues == ()
    await master.create_task(name, kwargs={})
    dead = await next_message(master.channel, worker.dead_letter_queue)
    assert calls == 1
    assert (dead.headers or {})[HEADER_ERROR_TYPE] == "ValueError"
    assert (dead.headers or {})[HEADER_ATTEMPTS] == 1


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{not json", "application/json", "could not be deserialized"),
        (b'{"n": 1}', "application/msgpack", "content type 'application/msgpack'"),
        (b"[1, 2]", "application/json", "object of keyword arguments, not list"),
    ],
    ids=["undecodable", "wrong-content-type", "not-an-object"],
)
async def test_bad_payload_goes_straight_to_the_dead_letter_queue(
    master: Master, name: str, body: bytes, content_type: str, reason: str
) -> None:
    """An undecodable task is dead-lettered at once with the reason; the handler never runs."""
    handler, seen, _done = collector(1)
    worker = await master.create_worker(name, handler, retry=FAST)
    await master.channel.publish(
        hutch.Message(body, content_type=content_type, delivery_mode=2), name
    )
    dead = await next_message(master.channel, worker.dead_letter_queue)
    headers = dead.headers or {}
    assert dead.body == body
    assert headers[HEADER_ERROR_TYPE] == "hutch.DecodeError"
    assert reason in headers[HEADER_ERROR_MESSAGE]
    assert headers[HEADER_ATTEMPTS] == 0
    assert seen == []


@pytest.mark.parametrize("signal", [RejectMessage, NackMessage])
async def test_reject_and_nack_requeue_false_are_not_retried(
    master: Master, name: str, signal: type[RejectMessage | NackMessage]
) -> None:
    """Reject/Nack(requeue=False) settles once via the queue's own DLX: no retry, no .dead."""
    calls = 0

    async def handler(**kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        raise signal(requeue=False)

    rejected = f"{name}.rejected"
    await master.channel.queue_declare(rejected)
    try:
        worker = await master.create_worker(
            name,
            handler,
            retry=FAST,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": rejected},
        )
        await master.create_task(name, kwargs={"n": 1})
        got = await next_message(master.channel, rejected)
        assert json.loads(got.body) == {"n": 1}
        assert (got.headers or {})["x-death"][0]["reason"] == "rejected"
        assert calls == 1
        await worker.close()
        dead = await master.channel.queue_declare(worker.dead_letter_queue, passive=True)
        assert dead.message_count == 0
    finally:
        await master.channel.queue_delete(rejected)


@pytest.mark.parametrize("signal", [RejectMessage, NackMessage])
async def test_reject_and_nack_requeue_true_deliver_the_task_again(
    master: Master, name: str, signal: type[RejectMessage | NackMessage]
) -> None:
    """``RejectMessage/NackMessage(requeue=True)`` puts the task back: the handler sees it again."""
    handler_calls: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def handler(**kwargs: Any) -> None:
        handler_calls.append(kwargs)
        if len(handler_calls) == 1:
            raise signal(requeue=True)
        done.set()

    await master.create_worker(name, handler)
    await master.create_task(name, kwargs={"n": 7})
    await asyncio.wait_for(done.wait(), WAIT)
    assert handler_calls == [{"n": 7}, {"n": 7}]


async def test_concurrency_is_bounded_by_prefetch_count(master: Master, name: str) -> None:
    """With ``prefetch_count=3`` at most 3 handlers run at once and the rest wait in the queue."""
    running = 0
    peak = 0
    finished = 0
    three = asyncio.Event()
    release = asyncio.Event()
    all_done = asyncio.Event()

    async def handler(**kwargs: Any) -> None:
        nonlocal running, peak, finished
        running += 1
        peak = max(peak, running)
        if running == 3:
            three.set()
        await release.wait()
        running -= 1
        finished += 1
        if finished == 10:
            all_done.set()

    worker = await master.create_worker(name, handler, prefetch_count=3)
    try:
        await master.create_tasks(name, [{"n": n} for n in range(10)])
        await asyncio.wait_for(three.wait(), WAIT)
        info = await master.channel.queue_declare(name, passive=True)
        assert info.message_count == 7  # the broker holds back what exceeds the prefetch
        assert worker.in_flight == 3
    finally:
        release.set()
    await asyncio.wait_for(all_done.wait(), WAIT)
    assert peak == 3


async def test_concurrency_is_bounded_by_default(master: Master, name: str) -> None:
    """Without ``prefetch_count`` a worker still runs at most ``DEFAULT_PREFETCH`` handlers."""
    running = 0
    full = asyncio.Event()
    release = asyncio.Event()

    async def handler(**kwargs: Any) -> None:
        nonlocal running
        running += 1
        if running == DEFAULT_PREFETCH:
            full.set()
        await release.wait()

    await master.create_worker(name, handler)
    try:
        await master.create_tasks(name, [{"n": n} for n in range(DEFAULT_PREFETCH + 5)])
        await asyncio.wait_for(full.wait(), WAIT)
        info = await master.channel.queue_declare(name, passive=True)
        assert info.message_count == 5
        assert running == DEFAULT_PREFETCH
    finally:
        release.set()


async def test_sync_handler_runs_in_a_thread_while_the_loop_stays_responsive(
    master: Master, name: str
) -> None:
    """A plain handler blocks a pool thread, not the loop; its task is acked on return."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future[int] = loop.create_future()
    gate = threading.Event()
    returned = asyncio.Event()

    def blocking(*, n: int) -> None:
        loop.call_soon_threadsafe(started.set_result, threading.get_ident())
        if not gate.wait(WAIT):
            raise TimeoutError("the test never opened the gate")
        loop.call_soon_threadsafe(returned.set)

    worker = await master.create_worker(name, blocking)
    await master.create_task(name, kwargs={"n": 1})
    thread = await asyncio.wait_for(started, WAIT)
    assert thread != threading.get_ident()
    # the loop is free: a confirmed publish round trip completes while the handler blocks
    await master.channel.queue_declare(f"{name}.side")
    await master.create_task(f"{name}.side", kwargs={})
    await master.channel.queue_delete(f"{name}.side")
    gate.set()
    await asyncio.wait_for(returned.wait(), WAIT)
    await worker.close()
    info = await master.channel.queue_declare(name, passive=True)
    assert info.message_count == 0  # acked, not requeued by the close


async def test_close_waits_for_handlers_in_flight(master: Master, name: str) -> None:
    """``Worker.close()`` lets a running handler finish and ack before closing the channel."""
    started = asyncio.Event()
    release = asyncio.Event()
    finished = False

    async def slow(**kwargs: Any) -> None:
        nonlocal finished
        started.set()
        await release.wait()
        finished = True

    worker = await master.create_worker(name, slow)
    await master.create_task(name, kwargs={})
    await asyncio.wait_for(started.wait(), WAIT)
    closing = asyncio.ensure_future(worker.close(timeout=WAIT))
    # a close that did not wait would be done in a round trip; this one waits for the handler
    done, _pending = await asyncio.wait({closing}, timeout=0.3)
    assert not done
    assert worker.state.value == "closing"
    release.set()
    await asyncio.wait_for(closing, WAIT)
    assert finished
    assert worker.state.value == "closed"
    info = await master.channel.queue_declare(name, passive=True)
    assert info.message_count == 0
    await worker.close()  # idempotent


async def test_close_sends_the_acks_it_holds(
    master: Master, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's channel holds acks for up to ``ACK_DELAY``; ``close()`` sends the ones it
    holds, so no handled task goes back to the queue (here the delay is an hour: only the close
    sends them)."""
    monkeypatch.setattr("hutch.patterns.master.ACK_DELAY", 3600.0)
    task = Recorder(5)

    worker = await master.create_worker(name, task)
    await master.create_tasks(name, [{"i": i} for i in range(5)])
    await asyncio.wait_for(task.done.wait(), WAIT)
    await asyncio.wait_for(worker.close(), WAIT)
    info = await master.channel.queue_declare(name, passive=True)
    assert info.message_count == 0
    assert sorted(task.handled) == list(range(5))


async def test_acks_of_a_burst_go_out_when_half_the_prefetch_waits(
    master: Master, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a prefetch of 4, acks are sent two at a time even if the delay never ends: the
    broker keeps delivering, so a burst of tasks is handled with no timer involved."""
    monkeypatch.setattr("hutch.patterns.master.ACK_DELAY", 3600.0)
    task = Recorder(40)

    worker = await master.create_worker(name, task, prefetch_count=4)
    await master.create_tasks(name, [{"i": i} for i in range(40)])
    await asyncio.wait_for(task.done.wait(), WAIT)
    assert sorted(task.handled) == list(range(40))
    await worker.close()


async def test_closing_the_connection_sends_the_acks_a_worker_holds(
    broker_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program that closes its connection without closing its workers first loses no ack:
    the held acks go out ahead of the connection's close, so no handled task runs again."""
    monkeypatch.setattr("hutch.patterns.master.ACK_DELAY", 3600.0)
    task = Recorder(5)

    async with await hutch.connect(broker_url) as connection:
        master = Master(await connection.channel())
        worker = await master.create_worker(name, task)
        await master.create_tasks(name, [{"i": i} for i in range(5)])
        await asyncio.wait_for(task.done.wait(), WAIT)
    async with await hutch.connect(broker_url) as connection:
        channel = await connection.channel()
        info = await channel.queue_declare(name, passive=True)
        assert info.message_count == 0
        for queue in (name, worker.dead_letter_queue, *worker.retry_queues):
            await channel.queue_delete(queue)
    assert sorted(task.handled) == list(range(5))


async def test_close_gives_up_on_handlers_after_its_timeout(master: Master, name: str) -> None:
    """close(timeout) cancels a stuck handler and its task goes back to the queue."""
    started = asyncio.Event()

    async def stuck(**kwargs: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    worker = await master.create_worker(name, stuck)
    await master.create_task(name, kwargs={"n": 5})
    await asyncio.wait_for(started.wait(), WAIT)
    began = time.monotonic()
    await asyncio.wait_for(worker.close(timeout=0.2), WAIT)
    assert time.monotonic() - began < WAIT / 2
    again = await next_message(master.channel, name)
    assert json.loads(again.body) == {"n": 5}
    assert again.redelivered


async def test_worker_queue_options_reach_the_declaration(master: Master, name: str) -> None:
    """create_worker(..., auto_delete=True) declares the queue auto-delete, as aio-pika."""
    handler, _seen, _done = collector(1)
    worker = await master.create_worker(name, handler, auto_delete=True)
    await worker.close()
    with pytest.raises(hutch.Unroutable):
        await master.create_task(name, kwargs={})


async def test_master_close_closes_its_workers(master: Master, name: str) -> None:
    """``Master.close()`` closes every worker it created."""
    handler, _seen, _done = collector(1)
    workers: list[Worker] = [
        await master.create_worker(name, handler),
        await master.create_worker(name, handler),
    ]
    await master.close()
    assert [w.state.value for w in workers] == ["closed", "closed"]


async def test_create_worker_rejects_unknown_options(master: Master, name: str) -> None:
    """A misspelt queue option is refused with the list of valid ones."""
    handler, _seen, _done = collector(1)
    with pytest.raises(TypeError, match="auto_delete"):
        await master.create_worker(name, handler, autodelete=True)


@pytest.mark.skipif("memory" not in TRANSPORTS, reason="hutch.memory is not there yet")
async def test_memory_broker_join_raises_the_dead_lettered_handler_error(name: str) -> None:
    """On memory://, broker.join() raises the error of a dead-lettered task."""
    from hutch.memory import get_broker

    broker_name = uuid.uuid4().hex
    async with await hutch.connect(f"memory://{broker_name}") as connection:
        master = Master(await connection.channel())

        async def failing(**kwargs: Any) -> None:
            raise Boom("in a test")

        await master.create_worker(name, failing, retry=Retry(attempts=0))
        await master.create_task(name, kwargs={})
        with pytest.raises(Boom, match="in a test"):
            await get_broker(broker_name).join(name)
        assert len(get_broker(broker_name).messages(f"{name}.dead")) == 1
        await master.close()


@pytest.mark.skipif("memory" not in TRANSPORTS, reason="hutch.memory is not there yet")
async def test_seed_programs_run_unchanged_on_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's worker and master programs run unchanged on memory://; all tasks flow."""
    url = f"memory://{uuid.uuid4().hex}"

    async def connect_robust(_seed_url: str, **options: Any) -> hutch.Connection:
        return await hutch.connect_robust(url, **options)

    worker_program = runpy.run_path(str(EXAMPLES / "worker.py"))
    master_program = runpy.run_path(str(EXAMPLES / "master.py"))
    worker_program["main"].__globals__["connect_robust"] = connect_robust
    master_program["main"].__globals__["connect_robust"] = connect_robust

    handled: list[int] = []
    ready = asyncio.Event()
    all_handled = asyncio.Event()
    real_create_worker = Master.create_worker

    async def create_worker(self: Master, queue_name: str, func: Any, **options: Any) -> Worker:
        async def counted(**kwargs: Any) -> None:
            try:
                await func(**kwargs)
            finally:
                handled.append(kwargs["task_id"])
                if len(handled) == 2000:
                    all_handled.set()

        worker = await real_create_worker(self, queue_name, counted, **options)
        ready.set()
        return worker

    monkeypatch.setattr(Master, "create_worker", create_worker)
    worker_main = asyncio.ensure_future(worker_program["main"]())
    try:
        await asyncio.wait_for(ready.wait(), WAIT)
        await asyncio.wait_for(master_program["main"](), 60)
        await asyncio.wait_for(all_handled.wait(), WAIT)
    finally:
        worker_main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_main
    assert sorted(handled) == sorted(list(range(1000)) * 2)


async def test_worker_reports_closed_when_its_connection_is_lost(
    broker_url: str, master: Master, name: str
) -> None:
    """A worker on a plain connection that goes away says so: its state becomes ``CLOSED``."""
    handler, _seen, _done = collector(1)
    worker_connection = await hutch.connect(broker_url)
    worker = await Master(await worker_connection.channel()).create_worker(name, handler)
    assert worker.state.value == "running"
    await worker_connection.close()
    assert worker.state.value == "closed"
    await worker.close()  # still fine to call
