"""Contract: consumers, prefetch, settling and redelivery behave as on RabbitMQ."""

from __future__ import annotations

import asyncio

import pytest

import hutch
from tests.contract.conftest import WAIT, CloseWatch, Env, Inbox, drain


async def test_consumer_gets_each_message_once_in_order(env: Env) -> None:
    """A consumer's callback is called once per message, in publish order."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    inbox = Inbox(ack=True)
    tag = await channel.consume(queue, inbox)
    for index in range(50):
        await channel.publish(str(index).encode(), queue)
    got = await inbox.take(50)
    assert [m.body for m in got] == [str(i).encode() for i in range(50)]
    assert {m.consumer_tag for m in got} == {tag}
    assert [m.delivery_tag for m in got] == list(range(1, 51))
    assert not any(m.redelivered for m in got)


async def test_delivery_never_happens_inside_publish(env: Env) -> None:
    """A delivery reaches the callback later, from the event loop, never during ``publish``."""
    channel = await env.channel(publisher_confirms=False)
    queue = env.queue()
    await channel.queue_declare(queue)
    inbox = Inbox()
    await channel.consume(queue, inbox, no_ack=True)
    await channel.publish(b"x", queue)
    assert inbox.messages == []
    assert (await inbox.next()).body == b"x"


async def test_async_callbacks_run_concurrently_as_tasks(env: Env) -> None:
    """An ``async def`` callback runs as a task: a second delivery starts while the first
    still waits."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    release = asyncio.Event()
    started: list[bytes] = []
    both = asyncio.Event()

    async def handler(message: hutch.IncomingMessage) -> None:
        started.append(message.body)
        if len(started) == 2:
            both.set()
        await release.wait()
        await message.ack()

    await channel.consume(queue, handler)
    await channel.publish(b"1", queue)
    await channel.publish(b"2", queue)
    await asyncio.wait_for(both.wait(), WAIT)
    release.set()
    assert started == [b"1", b"2"]


async def test_prefetch_limits_unacked_deliveries_per_consumer(env: Env) -> None:
    """With ``set_qos(2)`` a consumer holds at most two unacked messages; acking one lets the
    next come."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    await channel.set_qos(2)
    for index in range(5):
        await channel.publish(str(index).encode(), queue)
    inbox = Inbox()
    await channel.consume(queue, inbox)
    first = await inbox.take(2)
    assert (await channel.queue_declare(queue, passive=True)).message_count == 3
    await first[0].ack()
    assert (await inbox.next()).body == b"2"
    assert (await channel.queue_declare(queue, passive=True)).message_count == 2


async def test_global_prefetch_is_shared_by_the_channels_consumers(env: Env) -> None:
    """``set_qos(n, global_=True)`` bounds the unacked deliveries of all the channel's consumers
    together."""
    channel = await env.channel()
    first, second = env.queue("a"), env.queue("b")
    for queue in (first, second):
        await channel.queue_declare(queue)
        for _ in range(3):
            await channel.publish(b"x", queue)
    await channel.set_qos(2, global_=True)
    inbox = Inbox()
    await channel.consume(first, inbox)
    await channel.consume(second, inbox)
    taken = await inbox.take(2)
    counts = [(await channel.queue_declare(q, passive=True)).message_count for q in (first, second)]
    assert sum(counts) == 4
    await taken[0].ack()
    await inbox.next()
    counts = [(await channel.queue_declare(q, passive=True)).message_count for q in (first, second)]
    assert sum(counts) == 3


async def test_qos_applies_to_consumers_started_after_it(env: Env) -> None:
    """A per-consumer ``set_qos`` does not limit a consumer that was started before it."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    inbox = Inbox()
    await channel.consume(queue, inbox)
    await channel.set_qos(1)
    for _ in range(3):
        await channel.publish(b"x", queue)
    await inbox.take(3)


async def test_consumers_of_a_queue_take_turns(env: Env) -> None:
    """Messages are spread round-robin over a queue's consumers."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    left, right = Inbox(ack=True), Inbox(ack=True)
    await (await env.channel()).consume(queue, left)
    await (await env.channel()).consume(queue, right)
    for index in range(6):
        await channel.publish(str(index).encode(), queue)
    await left.take(3)
    await right.take(3)
    assert len(left.messages) == len(right.messages) == 3


async def test_requeued_message_comes_back_first_and_marked_redelivered(env: Env) -> None:
    """``nack``/``reject`` with requeue puts the message back at its place (ahead of newer
    ones) with ``redelivered`` set."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    for body in (b"1", b"2", b"3"):
        await channel.publish(body, queue)
    one = await channel.get(queue)
    two = await channel.get(queue)
    assert one is not None
    assert two is not None
    await two.reject(requeue=True)
    await one.nack(requeue=True)
    again = [await channel.get(queue, no_ack=True) for _ in range(3)]
    assert [(m.body, m.redelivered) for m in again if m] == [
        (b"1", True),
        (b"2", True),
        (b"3", False),
    ]


async def test_ack_and_nack_with_multiple_settle_every_earlier_delivery(env: Env) -> None:
    """``multiple=True`` settles the delivery and every earlier unsettled one on the channel;
    tag 0 with ``multiple`` settles them all."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    for index in range(6):
        await channel.publish(str(index).encode(), queue)
    got = [await channel.get(queue) for _ in range(6)]
    tags = [m.delivery_tag for m in got if m]
    await channel.ack(tags[1], multiple=True)
    await channel.nack(tags[3], multiple=True, requeue=True)
    assert [(m.body, m.redelivered) for m in [await channel.get(queue)] if m] == [(b"2", True)]
    await channel.ack(0, multiple=True)
    assert await channel.queue_declare(queue, passive=True) == hutch.QueueInfo(queue, 1, 0)
    assert await drain(channel, queue) == [b"3"]


async def test_acking_an_unknown_delivery_tag_closes_the_channel(env: Env) -> None:
    """Acking a tag the channel never delivered (or already acked) is PRECONDITION_FAILED:
    RabbitMQ closes the channel."""
    channel = await env.channel()
    watch = CloseWatch(channel)
    await channel.ack(42)
    error = await watch.error()
    assert isinstance(error, hutch.PreconditionFailed)
    assert "unknown delivery tag 42" in str(error)
    queue = env.queue()
    channel = await env.channel()
    await channel.queue_declare(queue)
    await channel.publish(b"x", queue)
    message = await channel.get(queue)
    assert message is not None
    await channel.ack(message.delivery_tag)
    watch = CloseWatch(channel)
    await channel.ack(message.delivery_tag)
    assert isinstance(await watch.error(), hutch.PreconditionFailed)


async def test_settling_a_message_twice_raises_at_the_client(env: Env) -> None:
    """``message.ack()`` twice raises MessageAlreadySettled before anything reaches the
    broker; the channel stays open."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    await channel.publish(b"x", queue)
    message = await channel.get(queue)
    assert message is not None
    await message.ack()
    with pytest.raises(hutch.MessageAlreadySettled):
        await message.nack()
    assert await channel.get(queue) is None
    assert not channel.is_closed


async def test_closing_a_channel_requeues_its_unacked_deliveries(env: Env) -> None:
    """The unacked deliveries of a closed channel go back to their queue, redelivered."""
    queue = env.queue()
    consumer = await env.channel()
    await consumer.queue_declare(queue)
    inbox = Inbox()
    await consumer.consume(queue, inbox)
    publisher = await env.channel()
    for body in (b"1", b"2"):
        await publisher.publish(body, queue)
    await inbox.take(2)
    await consumer.close()
    again = [await publisher.get(queue, no_ack=True) for _ in range(2)]
    assert [(m.body, m.redelivered) for m in again if m] == [(b"1", True), (b"2", True)]


async def test_closing_a_connection_requeues_its_unacked_deliveries(env: Env) -> None:
    """Closing the connection requeues the unacked deliveries of all its channels."""
    queue = env.queue()
    connection = await env.connect()
    channel = await connection.channel()
    await channel.queue_declare(queue)
    await channel.publish(b"x", queue)
    assert await channel.get(queue) is not None
    await connection.close()
    checker = await env.channel()
    message = await checker.get(queue, no_ack=True)
    assert message is not None
    assert (message.body, message.redelivered) == (b"x", True)


async def test_cancelled_consumer_gets_nothing_more_and_can_still_ack(env: Env) -> None:
    """After ``cancel`` no more messages reach the callback; its unacked ones can be acked."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    inbox = Inbox()
    tag = await channel.consume(queue, inbox)
    await channel.publish(b"1", queue)
    first = await inbox.next()
    await channel.cancel(tag)
    await channel.publish(b"2", queue)
    await first.ack()
    assert await channel.queue_declare(queue, passive=True) == hutch.QueueInfo(queue, 1, 0)
    assert await drain(channel, queue) == [b"2"]
    assert len(inbox.messages) == 1


async def test_consuming_a_missing_queue_is_not_found(env: Env) -> None:
    """Consuming a queue that does not exist is NOT_FOUND."""
    channel = await env.channel()
    with pytest.raises(hutch.NotFound, match="no queue"):
        await channel.consume(env.queue(), Inbox())


async def test_exclusive_consumer_keeps_others_out(env: Env) -> None:
    """With an exclusive consumer another consumer is ACCESS_REFUSED, and an exclusive one is
    refused on a queue that has consumers."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    await channel.consume(queue, Inbox(), exclusive=True)
    other = await env.channel()
    with pytest.raises(hutch.AccessRefused, match="in exclusive use"):
        await other.consume(queue, Inbox())
    shared = env.queue("shared")
    await channel.queue_declare(shared)
    await channel.consume(shared, Inbox())
    other = await env.channel()
    with pytest.raises(hutch.AccessRefused, match="in exclusive use"):
        await other.consume(shared, Inbox(), exclusive=True)


async def test_get_takes_one_message_or_none(env: Env) -> None:
    """``get`` takes the head (unacked until settled) and returns None on an empty queue."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    assert await channel.get(queue) is None
    await channel.publish(b"a", queue)
    message = await channel.get(queue)
    assert message is not None
    assert (message.body, message.consumer_tag, message.redelivered) == (b"a", "", False)
    assert not message.settled
    await message.reject(requeue=True)
    again = await channel.get(queue, no_ack=True)
    assert again is not None
    assert again.settled
    assert again.redelivered


async def test_ack_delay_is_taken_and_checked(env: Env) -> None:
    """``channel(ack_delay=...)`` takes seconds, 0 or more (the embedded broker ignores it): a
    channel with one consumes and acks as usual, and what it held is sent when it closes."""
    connection = await env.connect()
    for wrong in (-1, "1", True):
        with pytest.raises(ValueError, match="ack_delay must be a number of seconds"):
            await connection.channel(ack_delay=wrong)  # type: ignore[arg-type]
    channel = await connection.channel(ack_delay=3600)
    queue = env.queue()
    await channel.queue_declare(queue)
    inbox = Inbox(ack=True)
    await channel.consume(queue, inbox)
    for index in range(3):
        await channel.publish(str(index).encode(), queue)
    await inbox.take(3)
    await channel.close()
    other = await connection.channel()
    info = await other.queue_declare(queue, passive=True)
    assert info.message_count == 0
