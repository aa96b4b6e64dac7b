"""Contract: queue declaration, flags, purge and delete behave as on RabbitMQ."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

import hutch
from tests.contract.conftest import CloseWatch, Env, Inbox, drain


async def test_server_named_queue_gets_an_amq_gen_name(env: Env) -> None:
    """``queue_declare("")`` makes a queue the broker names ``amq.gen-...``, usable at once."""
    channel = await env.channel()
    info = await channel.queue_declare("", exclusive=True)
    assert info.queue.startswith("amq.gen-")
    assert info == hutch.QueueInfo(info.queue, 0, 0)
    await channel.publish(b"x", info.queue)
    assert await drain(channel, info.queue) == [b"x"]


async def test_declare_returns_ready_and_consumer_counts(env: Env) -> None:
    """Declaring again (or passively) reports the ready messages (not the unacked) and the
    consumers; ``get`` reports how many remain."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    for body in (b"1", b"2", b"3"):
        await channel.publish(body, queue)
    message = await channel.get(queue)
    assert message is not None
    assert message.message_count == 2
    assert await channel.queue_declare(queue) == hutch.QueueInfo(queue, 2, 0)
    other = await env.channel()
    inbox = Inbox()
    await other.consume(queue, inbox)
    await inbox.take(2)
    assert await channel.queue_declare(queue, passive=True) == hutch.QueueInfo(queue, 0, 1)


async def test_passive_declare_of_a_missing_queue_is_not_found_and_closes_the_channel(
    env: Env,
) -> None:
    """A passive declare of a queue that does not exist raises NotFound with RabbitMQ's text;
    the channel is closed, and using it again raises the same error."""
    channel = await env.channel()
    queue = env.queue()
    watch = CloseWatch(channel)
    with pytest.raises(hutch.NotFound, match=f"NOT_FOUND - no queue '{queue}' in vhost '/'"):
        await channel.queue_declare(queue, passive=True)
    assert isinstance(await watch.error(), hutch.NotFound)
    assert channel.is_closed
    with pytest.raises(hutch.NotFound):
        await channel.queue_declare(queue)


async def test_passive_declare_ignores_the_flags_it_is_given(env: Env) -> None:
    """A passive declare only checks that the queue exists; its flags are not compared."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    info = await channel.queue_declare(
        queue, passive=True, durable=True, arguments={"x-message-ttl": 5}
    )
    assert info == hutch.QueueInfo(queue, 0, 0)


@pytest.mark.parametrize(
    ("first", "second", "text"),
    [
        ({}, {"durable": True}, "inequivalent arg 'durable'"),
        ({}, {"auto_delete": True}, "inequivalent arg 'auto_delete'"),
        ({}, {"arguments": {"x-message-ttl": 100}}, "inequivalent arg 'x-message-ttl'"),
        (
            {"arguments": {"x-message-ttl": 100}},
            {"arguments": {"x-message-ttl": 200}},
            "received '200' but current is '100'",
        ),
        (
            {"arguments": {"x-dead-letter-exchange": "a"}},
            {},
            "inequivalent arg 'x-dead-letter-exchange'",
        ),
    ],
)
async def test_redeclaring_a_queue_differently_is_precondition_failed(
    env: Env, first: dict[str, object], second: dict[str, object], text: str
) -> None:
    """Declaring an existing queue with other flags or arguments is PRECONDITION_FAILED and
    closes the channel."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue, **first)  # type: ignore[arg-type]
    watch = CloseWatch(channel)
    with pytest.raises(hutch.PreconditionFailed, match=text) as caught:
        await channel.queue_declare(queue, **second)  # type: ignore[arg-type]
    assert caught.value.reply_code == 406
    assert isinstance(await watch.error(), hutch.PreconditionFailed)


async def test_redeclaring_with_an_unknown_argument_is_accepted(env: Env) -> None:
    """RabbitMQ only compares the arguments it knows; an unknown one does not conflict."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    assert await channel.queue_declare(queue, arguments={"my-arg": 1}) == hutch.QueueInfo(
        queue, 0, 0
    )


async def test_redeclaring_an_exchange_differently_is_precondition_failed(env: Env) -> None:
    """Declaring an existing exchange with another type or flags is PRECONDITION_FAILED."""
    channel = await env.channel()
    exchange = env.exchange()
    await channel.exchange_declare(exchange, "direct")
    await channel.exchange_declare(exchange, "direct")
    with pytest.raises(hutch.PreconditionFailed, match="inequivalent arg 'type'"):
        await channel.exchange_declare(exchange, "fanout")
    channel = await env.channel()
    with pytest.raises(hutch.PreconditionFailed, match="inequivalent arg 'durable'"):
        await channel.exchange_declare(exchange, "direct", durable=True)


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        ({"x-message-ttl": -1}, "invalid arg 'x-message-ttl'"),
        ({"x-message-ttl": "100"}, "invalid arg 'x-message-ttl'"),
        ({"x-max-length": -1}, "invalid arg 'x-max-length'"),
        ({"x-max-priority": 256}, "invalid arg 'x-max-priority'"),
        ({"x-overflow": "drop-tail"}, "invalid arg 'x-overflow'"),
        ({"x-dead-letter-exchange": 5}, "invalid type 'byte' for arg 'x-dead-letter-exchange'"),
    ],
)
async def test_invalid_queue_arguments_are_precondition_failed(
    env: Env, arguments: dict[str, object], text: str
) -> None:
    """A queue argument of the wrong type or range is refused with PRECONDITION_FAILED."""
    channel = await env.channel()
    with pytest.raises(hutch.PreconditionFailed, match=text):
        await channel.queue_declare(env.queue(), arguments=arguments)


async def test_exclusive_queue_is_locked_to_its_connection(env: Env) -> None:
    """Another connection may publish to an exclusive queue but gets RESOURCE_LOCKED for
    declare, consume, get, purge, delete and bind; the queue goes when its connection closes."""
    owner = await env.connect()
    channel = await owner.channel()
    queue = env.queue()
    await channel.queue_declare(queue, exclusive=True)
    other = await env.connect()
    publisher = await other.channel()
    await publisher.publish(b"from-other", queue, mandatory=True)
    operations: dict[str, Callable[[hutch.Channel], Awaitable[object]]] = {
        "declare": lambda ch: ch.queue_declare(queue, passive=True),
        "redeclare": lambda ch: ch.queue_declare(queue, exclusive=True),
        "consume": lambda ch: ch.consume(queue, lambda m: None),
        "get": lambda ch: ch.get(queue),
        "purge": lambda ch: ch.queue_purge(queue),
        "delete": lambda ch: ch.queue_delete(queue),
        "bind": lambda ch: ch.queue_bind(queue, "amq.direct", "k"),
    }
    for label, operation in operations.items():
        attempt = await other.channel()
        with pytest.raises(hutch.ResourceLocked, match="cannot obtain exclusive access"):
            await operation(attempt)
        assert label
        assert attempt.is_closed
    assert await channel.queue_declare(queue, exclusive=True) == hutch.QueueInfo(queue, 1, 0)
    await owner.close()
    checker = await other.channel()
    with pytest.raises(hutch.NotFound):
        await checker.queue_declare(queue, passive=True)


async def test_exclusive_flag_must_match_on_redeclare(env: Env) -> None:
    """Redeclaring a queue with a different ``exclusive`` flag is RESOURCE_LOCKED, even on the
    same connection."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue, exclusive=True)
    with pytest.raises(hutch.ResourceLocked):
        await channel.queue_declare(queue)
    channel = await env.channel()
    shared = env.queue("shared")
    await channel.queue_declare(shared)
    with pytest.raises(hutch.ResourceLocked):
        await channel.queue_declare(shared, exclusive=True)


async def test_auto_delete_queue_goes_with_its_last_consumer(env: Env) -> None:
    """An auto-delete queue is deleted when its last consumer is cancelled — not before it
    had one."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue, auto_delete=True)
    await channel.queue_declare(queue, passive=True)  # no consumer yet: still there
    first = await channel.consume(queue, lambda m: None)
    second = await channel.consume(queue, lambda m: None)
    await channel.cancel(first)
    assert await channel.queue_declare(queue, passive=True) == hutch.QueueInfo(queue, 0, 1)
    await channel.cancel(second)
    with pytest.raises(hutch.NotFound):
        await channel.queue_declare(queue, passive=True)


async def test_auto_delete_queue_goes_when_its_consumers_channel_closes(env: Env) -> None:
    """Closing the channel of the last consumer deletes an auto-delete queue."""
    consumer = await env.channel()
    queue = env.queue()
    await consumer.queue_declare(queue, auto_delete=True)
    await consumer.consume(queue, lambda m: None)
    await consumer.close()
    checker = await env.channel()
    with pytest.raises(hutch.NotFound):
        await checker.queue_declare(queue, passive=True)


async def test_purge_and_delete_report_message_counts(env: Env) -> None:
    """Purge removes and counts the ready messages; delete returns the count too; deleting a
    missing queue returns 0."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    for _ in range(3):
        await channel.publish(b"x", queue)
    assert await channel.queue_purge(queue) == 3
    assert await channel.get(queue) is None
    await channel.publish(b"y", queue)
    await channel.publish(b"z", queue)
    assert await channel.queue_delete(queue) == 2
    assert await channel.queue_delete(queue) == 0


async def test_delete_if_unused_and_if_empty_are_refused_when_not_so(env: Env) -> None:
    """``if_empty`` refuses a queue with ready messages, ``if_unused`` one with consumers."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    await channel.publish(b"1", queue)
    with pytest.raises(hutch.PreconditionFailed, match=f"queue '{queue}' in vhost '/' not empty"):
        await channel.queue_delete(queue, if_empty=True)
    consumer = await env.channel()
    await consumer.consume(queue, Inbox())
    channel = await env.channel()
    with pytest.raises(hutch.PreconditionFailed, match=f"queue '{queue}' in vhost '/' in use"):
        await channel.queue_delete(queue, if_unused=True)


async def test_purge_of_a_missing_queue_is_not_found(env: Env) -> None:
    """Purging a queue that does not exist is NOT_FOUND (unlike deleting it)."""
    channel = await env.channel()
    with pytest.raises(hutch.NotFound, match="no queue"):
        await channel.queue_purge(env.queue())


async def test_an_empty_queue_name_means_the_last_declared_queue(env: Env) -> None:
    """As in RabbitMQ, ``""`` in get/bind/purge names the channel's last declared queue; with
    none declared it is NOT_FOUND."""
    channel = await env.channel()
    with pytest.raises(hutch.NotFound, match="no previously declared queue"):
        await channel.get("")
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    await channel.publish(b"hi", queue)
    message = await channel.get("", no_ack=True)
    assert message is not None
    assert (message.body, message.routing_key) == (b"hi", queue)
