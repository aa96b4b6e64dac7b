"""Contract: RabbitMQ's direct reply-to (``amq.rabbitmq.reply-to``) on both brokers."""

from __future__ import annotations

import pytest

import hutch
from tests.contract.conftest import Env, Inbox

REPLY_TO = "amq.rabbitmq.reply-to"


async def test_direct_reply_to_round_trip(env: Env) -> None:
    """Publishing with ``reply_to=amq.rabbitmq.reply-to`` from a channel consuming that
    pseudo-queue rewrites it to a unique ``amq.rabbitmq.reply-to.<token>``; a message
    published there (from any connection) reaches that consumer, unacked-free."""
    caller = await env.channel()
    replies = Inbox()
    tag = await caller.consume(REPLY_TO, replies, no_ack=True)
    queue = env.queue("requests")
    await caller.queue_declare(queue)
    await caller.publish(hutch.Message(b"request", reply_to=REPLY_TO), queue)
    request = await caller.get(queue, no_ack=True)
    assert request is not None
    assert request.reply_to is not None
    assert request.reply_to.startswith(REPLY_TO + ".")
    callee = await env.channel()
    await callee.publish(hutch.Message(b"reply", correlation_id="c-1"), request.reply_to)
    reply = await replies.next()
    assert (reply.body, reply.correlation_id) == (b"reply", "c-1")
    assert (reply.exchange, reply.routing_key, reply.consumer_tag) == ("", request.reply_to, tag)
    assert reply.settled
    assert not reply.redelivered


async def test_the_reply_address_is_the_same_for_every_request_of_a_channel(env: Env) -> None:
    """One channel's reply consumer has one address: every request carries the same one."""
    caller = await env.channel()
    await caller.consume(REPLY_TO, Inbox(), no_ack=True)
    queue = env.queue("requests")
    await caller.queue_declare(queue)
    for _ in range(2):
        await caller.publish(hutch.Message(b"request", reply_to=REPLY_TO), queue)
    first = await caller.get(queue, no_ack=True)
    second = await caller.get(queue, no_ack=True)
    assert first is not None
    assert second is not None
    assert first.reply_to == second.reply_to


async def test_direct_reply_to_needs_a_no_ack_consumer_on_the_publishing_channel(
    env: Env,
) -> None:
    """Publishing with ``reply_to=amq.rabbitmq.reply-to`` without a reply consumer on the same
    channel, or consuming it with acks, or twice, is PRECONDITION_FAILED."""
    channel = await env.channel()
    with pytest.raises(hutch.PreconditionFailed, match="fast reply consumer does not exist"):
        await channel.publish(hutch.Message(b"x", reply_to=REPLY_TO), "anything")
    channel = await env.channel()
    with pytest.raises(hutch.PreconditionFailed, match="reply consumer cannot acknowledge"):
        await channel.consume(REPLY_TO, Inbox())
    channel = await env.channel()
    await channel.consume(REPLY_TO, Inbox(), no_ack=True)
    with pytest.raises(hutch.PreconditionFailed, match="reply consumer already set"):
        await channel.consume(REPLY_TO, Inbox(), no_ack=True)


async def test_a_reply_to_a_gone_caller_is_dropped(env: Env) -> None:
    """After the caller's channel closed, a reply to its address is dropped quietly (and a
    mandatory one is returned)."""
    caller = await env.channel()
    await caller.consume(REPLY_TO, Inbox(), no_ack=True)
    queue = env.queue("requests")
    await caller.queue_declare(queue)
    await caller.publish(hutch.Message(b"request", reply_to=REPLY_TO), queue)
    request = await caller.get(queue, no_ack=True)
    assert request is not None
    assert request.reply_to is not None
    await caller.close()
    callee = await env.channel()
    await callee.publish(b"late reply", request.reply_to)
    with pytest.raises(hutch.Unroutable):
        await callee.publish(b"late reply", request.reply_to, mandatory=True)
    assert not callee.is_closed


async def test_mandatory_reply_to_a_live_caller(env: Env) -> None:
    """A mandatory reply to a live caller is delivered. RabbitMQ 3.10 also *returns* it as
    NO_ROUTE (direct reply-to bypasses routing, so the mandatory check fails); the memory
    broker deliberately does not copy that quirk and only delivers it — so replies should be
    published without ``mandatory``."""
    caller = await env.channel()
    replies = Inbox()
    await caller.consume(REPLY_TO, replies, no_ack=True)
    queue = env.queue("requests")
    await caller.queue_declare(queue)
    await caller.publish(hutch.Message(b"request", reply_to=REPLY_TO), queue)
    request = await caller.get(queue, no_ack=True)
    assert request is not None
    assert request.reply_to is not None
    callee = await env.channel()
    if env.is_memory:
        await callee.publish(b"reply", request.reply_to, mandatory=True)
    else:
        with pytest.raises(hutch.Unroutable):
            await callee.publish(b"reply", request.reply_to, mandatory=True)
    assert (await replies.next()).body == b"reply"
