"""Channels against the real broker: confirms, QoS, declarations, publish, consume, settling,
get, and channel errors that leave the connection usable."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import pytest

import hutch
from hutch.amqp import Channel, Connection


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[Connection]:
    async with await hutch.amqp.connect(amqp_url) as conn:
        yield conn


@pytest.fixture
async def channel(connection: Connection) -> Channel:
    return await connection.channel()


async def count(connection: Connection, queue: str) -> int:
    """Messages ready in ``queue``, asked on a channel of its own."""
    probe = await connection.channel()
    try:
        return (await probe.queue_declare(queue, passive=True)).message_count
    finally:
        await probe.close()


async def test_publish_with_confirms_returns_once_the_broker_has_the_message(
    channel: Channel, connection: Connection, name: str
) -> None:
    """With confirms (the default) the message is in the queue as soon as publish returns."""
    assert channel.publisher_confirms
    await channel.queue_declare(name, auto_delete=True)
    for number in range(5):
        await channel.publish(f"{number}".encode(), name)
        assert await count(connection, name) == number + 1


async def test_publish_without_confirms_is_delivered(connection: Connection, name: str) -> None:
    """A channel opened with publisher_confirms=False publishes without waiting."""
    channel = await connection.channel(publisher_confirms=False)
    assert not channel.publisher_confirms
    await channel.queue_declare(name, auto_delete=True)
    await channel.publish(b"fire and forget", name)
    got = None
    for _ in range(50):  # bounded: the publish has no confirm to wait on
        got = await channel.get(name, no_ack=True)
        if got is not None:
            break
    assert got is not None
    assert got.body == b"fire and forget"


async def test_qos_limits_unacked_deliveries(channel: Channel, name: str) -> None:
    """set_qos(2): the consumer holds at most two unacked messages; an ack lets one more in."""
    await channel.queue_declare(name, auto_delete=True)
    await channel.set_qos(2)
    for number in range(5):
        await channel.publish(f"{number}".encode(), name)
    got: asyncio.Queue[hutch.IncomingMessage] = asyncio.Queue()
    await channel.consume(name, got.put_nowait)
    first = [await asyncio.wait_for(got.get(), 5) for _ in range(2)]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(got.get(), 0.3)
    await first[0].ack()
    third = await asyncio.wait_for(got.get(), 5)
    assert [m.body for m in [*first, third]] == [b"0", b"1", b"2"]


async def test_exchange_declare_bind_unbind_delete(
    channel: Channel, connection: Connection, name: str
) -> None:
    """Messages flow source exchange → bound destination exchange → bound queue; unbinding
    makes a mandatory publish come back; a deleted exchange is gone."""
    source, destination = f"{name}.src", f"{name}.dst"
    await channel.exchange_declare(source, "topic")
    await channel.exchange_declare(destination, "fanout")
    await channel.queue_declare(name, auto_delete=True)
    await channel.queue_bind(name, destination)
    await channel.exchange_bind(destination, source, "orders.*")
    await channel.publish(b"routed", "orders.new", exchange=source, mandatory=True)
    got = await channel.get(name, no_ack=True)
    assert got is not None
    assert (got.body, got.exchange, got.routing_key) == (b"routed", source, "orders.new")
    await channel.exchange_unbind(destination, source, "orders.*")
    with pytest.raises(hutch.Unroutable):
        await channel.publish(b"x", "orders.new", exchange=source, mandatory=True)
    await channel.queue_unbind(name, destination)
    await channel.exchange_delete(destination)
    await channel.exchange_delete(source)
    probe = await connection.channel()
    with pytest.raises(hutch.NotFound, match=f"no exchange '{destination}'"):
        await probe.exchange_declare(destination, "fanout", passive=True)


async def test_server_named_queue_passive_and_counts(channel: Channel, name: str) -> None:
    """queue_declare("") gets a broker-chosen name; a passive declare reports its counts."""
    info = await channel.queue_declare("", exclusive=True)
    assert info.queue.startswith("amq.gen-")
    await channel.publish(b"one", info.queue)
    await channel.publish(b"two", info.queue)
    passive = await channel.queue_declare(info.queue, passive=True)
    assert passive == hutch.QueueInfo(info.queue, 2, 0)


async def test_queue_flags_and_arguments_are_applied(
    channel: Channel, connection: Connection, name: str
) -> None:
    """durable, auto_delete and arguments (x-max-length) reach the broker: redeclaring with
    other flags is refused with 406, and the length limit drops the oldest message."""
    await channel.queue_declare(name, durable=True, arguments={"x-max-length": 1})
    try:
        await channel.publish(b"old", name)
        await channel.publish(b"new", name)
        assert await count(connection, name) == 1
        got = await channel.get(name, no_ack=True)
        assert got is not None
        assert got.body == b"new"
        other = await connection.channel()
        with pytest.raises(hutch.PreconditionFailed, match="406 PRECONDITION_FAILED") as caught:
            await other.queue_declare(name, durable=False)
        assert "durable" in caught.value.reply_text
        assert caught.value.method == "Queue.Declare"
    finally:
        await (await connection.channel()).queue_delete(name)


async def test_exclusive_queue_is_locked_for_other_connections(
    channel: Channel, amqp_url: str, name: str
) -> None:
    """An exclusive queue refuses another connection with 405 RESOURCE_LOCKED."""
    await channel.queue_declare(name, exclusive=True)
    async with await hutch.amqp.connect(amqp_url) as other:
        other_channel = await other.channel()
        with pytest.raises(hutch.ResourceLocked, match="405 RESOURCE_LOCKED"):
            await other_channel.queue_declare(name, exclusive=True)


async def test_purge_and_delete_report_counts(
    channel: Channel, connection: Connection, name: str
) -> None:
    """queue_purge and queue_delete return how many messages the queue held; delete with
    if_empty refuses a queue that has messages."""
    await channel.queue_declare(name)
    for _ in range(3):
        await channel.publish(b"x", name)
    assert await channel.queue_purge(name) == 3
    await channel.publish(b"x", name)
    other = await connection.channel()
    with pytest.raises(hutch.PreconditionFailed):
        await other.queue_delete(name, if_empty=True)
    assert await channel.queue_delete(name) == 1


async def test_consume_then_cancel_stops_deliveries(
    channel: Channel, connection: Connection, name: str
) -> None:
    """After cancel, new messages stay in the queue instead of reaching the callback."""
    await channel.queue_declare(name, auto_delete=False)
    try:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: hutch.IncomingMessage) -> None:
            got.put_nowait(message.body)
            await message.ack()

        tag = await channel.consume(name, on_message)
        await channel.publish(b"before", name)
        assert await asyncio.wait_for(got.get(), 5) == b"before"
        await channel.cancel(tag)
        await channel.publish(b"after", name)
        assert await count(connection, name) == 1
        assert got.empty()
    finally:
        await channel.queue_delete(name)


async def test_nack_multiple_requeues_all_and_reject_drops(
    channel: Channel, connection: Connection, name: str
) -> None:
    """nack(multiple=True) on the last of three deliveries requeues all three; reject without
    requeue drops one; ack(multiple=True) settles the rest."""
    await channel.queue_declare(name, auto_delete=True)
    for number in range(3):
        await channel.publish(f"{number}".encode(), name)
    messages = [await channel.get(name) for _ in range(3)]
    assert all(m is not None for m in messages)
    assert await count(connection, name) == 0
    last = messages[-1]
    assert last is not None
    await last.nack(multiple=True)
    assert await count(connection, name) == 3
    again = [await channel.get(name) for _ in range(3)]
    assert [m.redelivered for m in again if m is not None] == [True, True, True]
    first = again[0]
    assert first is not None
    await first.reject(requeue=False)
    final = again[-1]
    assert final is not None
    await final.ack(multiple=True)
    assert await channel.get(name) is None
    with pytest.raises(hutch.MessageAlreadySettled):
        await final.ack()


async def test_get_returns_none_when_empty_and_the_remaining_count(
    channel: Channel, name: str
) -> None:
    """get() returns None on an empty queue and says how many messages remain after it."""
    await channel.queue_declare(name, auto_delete=True)
    assert await channel.get(name) is None
    await channel.publish(b"a", name)
    await channel.publish(b"b", name)
    got = await channel.get(name, no_ack=True)
    assert got is not None
    assert (got.body, got.message_count) == (b"a", 1)


@pytest.mark.parametrize(
    ("action", "error", "words"),
    [
        ("passive_missing", hutch.NotFound, "404 NOT_FOUND - no queue"),
        ("publish_missing_exchange", hutch.NotFound, "404 NOT_FOUND - no exchange"),
        ("redeclare_other_type", hutch.PreconditionFailed, "406 PRECONDITION_FAILED"),
        ("reserved_name", hutch.AccessRefused, "403 ACCESS_REFUSED"),
    ],
)
async def test_channel_error_names_code_and_text_and_leaves_the_connection_usable(
    connection: Connection, name: str, action: str, error: type[hutch.ChannelClosed], words: str
) -> None:
    """A broker channel error raises the matching ChannelClosed subclass with the broker's
    code and text; the channel is closed, the connection goes on."""
    channel = await connection.channel()
    closed: list[BaseException | None] = []
    channel.add_close_listener(lambda _ch, exc: closed.append(exc))
    calls = {
        "passive_missing": lambda: channel.queue_declare(f"{name}.missing", passive=True),
        "publish_missing_exchange": lambda: channel.publish(b"x", "rk", exchange=f"{name}.no"),
        "redeclare_other_type": lambda: channel.exchange_declare("amq.direct", "fanout"),
        "reserved_name": lambda: channel.queue_declare("amq.reserved"),
    }
    with pytest.raises(error, match=words) as caught:
        await calls[action]()
    assert caught.value.reply_code == int(words.split()[0])
    assert channel.is_closed
    assert closed == [caught.value]
    with pytest.raises(error):
        await channel.queue_declare(name)
    fresh = await connection.channel()
    info = await fresh.queue_declare(name, auto_delete=True)
    assert info.queue == name
    assert connection.is_connected


async def test_robust_channel_reopens_after_a_channel_error(amqp_url: str, name: str) -> None:
    """On a robust connection the same channel object is usable again after a channel error,
    with its consumer still attached."""
    async with await hutch.connect_robust(amqp_url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(name, auto_delete=True)
        got: asyncio.Queue[bytes] = asyncio.Queue()
        await channel.consume(name, lambda m: got.put_nowait(m.body), no_ack=True)
        with pytest.raises(hutch.NotFound):
            await channel.queue_declare(f"{name}.missing", passive=True)
        await channel.publish(b"after the error", name)
        assert await asyncio.wait_for(got.get(), 5) == b"after the error"
        assert channel.state is hutch.ChannelState.OPEN


async def test_channel_close_is_idempotent_and_frees_the_number(connection: Connection) -> None:
    """Closing a channel twice is fine; its number can be used again by a new channel."""
    channel = await connection.channel()
    number = channel.number
    await channel.close()
    await channel.close()
    assert channel.is_closed
    again = await connection.channel()
    assert again.number == number
    await again.queue_declare("", exclusive=True)


_DELIVERY: contextvars.ContextVar[bytes] = contextvars.ContextVar("delivery")


async def test_each_async_callback_runs_in_a_task_and_context_of_its_own(
    channel: Channel, name: str
) -> None:
    """However the channel starts them (eagerly, or on the next loop turn), ``async def``
    callbacks each run in a task of their own with their own copy of the context: what one
    delivery sets is not seen by the next, even when a callback waits and finishes after the
    next one ran."""
    await channel.queue_declare(name, auto_delete=True)
    first_waits = asyncio.Event()
    seen: list[tuple[bytes, bytes | None, bytes, asyncio.Task[Any] | None]] = []
    done = asyncio.Event()

    async def on_message(message: hutch.IncomingMessage) -> None:
        before = _DELIVERY.get(None)
        _DELIVERY.set(message.body)
        if message.body == b"1":
            await first_waits.wait()  # the second delivery runs meanwhile
        else:
            first_waits.set()
        seen.append((message.body, before, _DELIVERY.get(), asyncio.current_task()))
        await message.ack()
        if len(seen) == 2:
            done.set()

    await channel.consume(name, on_message)
    await channel.publish(b"1", name)
    await channel.publish(b"2", name)
    await asyncio.wait_for(done.wait(), 5)
    assert [(body, before, after) for body, before, after, _task in seen] == [
        (b"2", None, b"2"),
        (b"1", None, b"1"),
    ]
    tasks = [task for *_rest, task in seen]
    assert None not in tasks
    assert tasks[0] is not tasks[1]
