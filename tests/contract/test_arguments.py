"""Contract: TTLs, dead-lettering, length limits and priorities behave as on RabbitMQ."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

import hutch
from tests.contract.conftest import Env, Inbox, drain


async def dead_letter_setup(env: Env, **arguments: Any) -> tuple[hutch.Channel, str, str, Inbox]:
    """A queue whose dead letters go (through the default exchange) to a consumed queue."""
    channel = await env.channel()
    queue, dead = env.queue("work"), env.queue("dead")
    await channel.queue_declare(dead)
    await channel.queue_declare(
        queue,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead, **arguments},
    )
    inbox = Inbox()
    await channel.consume(dead, inbox, no_ack=True)
    return channel, queue, dead, inbox


def death_of(message: hutch.IncomingMessage) -> dict[str, Any]:
    headers = message.headers or {}
    deaths = headers["x-death"]
    assert isinstance(deaths, list)
    assert len(deaths) == 1
    death = deaths[0]
    assert isinstance(death, dict)
    return death


def assert_recent(stamp: Any) -> None:
    assert isinstance(stamp, datetime.datetime)
    now = datetime.datetime.now(datetime.UTC)
    assert abs((now - stamp).total_seconds()) < 60


async def test_rejected_message_is_dead_lettered_with_x_death(env: Env) -> None:
    """``reject(requeue=False)`` dead-letters the message with RabbitMQ's headers: an
    ``x-death`` entry (count, reason, queue, time, exchange, routing-keys,
    original-expiration) and ``x-first-death-*``; the expiration property is removed."""
    channel, queue, dead, inbox = await dead_letter_setup(env)
    await channel.publish(
        hutch.Message(b"job", headers={"mine": "kept"}, expiration=60, message_id="m-1"), queue
    )
    message = await channel.get(queue)
    assert message is not None
    await message.reject(requeue=False)
    got = await inbox.next()
    assert got.body == b"job"
    assert (got.exchange, got.routing_key) == ("", dead)
    assert got.expiration is None
    assert got.message_id == "m-1"
    death = death_of(got)
    assert_recent(death.pop("time"))
    assert death == {
        "count": 1,
        "reason": "rejected",
        "queue": queue,
        "exchange": "",
        "routing-keys": [queue],
        "original-expiration": "60000",
    }
    headers = got.headers or {}
    assert headers["mine"] == "kept"
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-first-death-queue"] == queue
    assert headers["x-first-death-exchange"] == ""


async def test_dead_lettered_again_from_the_same_queue_counts_up(env: Env) -> None:
    """A message dead-lettered again for the same queue and reason increments that entry's
    ``count`` instead of adding one."""
    channel, queue, _dead, inbox = await dead_letter_setup(env)
    await channel.publish(b"job", queue)
    first = await channel.get(queue)
    assert first is not None
    await first.nack(requeue=False)
    once = await inbox.next()
    await channel.publish(hutch.Message(once.body, headers=once.headers), queue)
    second = await channel.get(queue)
    assert second is not None
    await second.nack(requeue=False)
    twice = await inbox.next()
    death = death_of(twice)
    assert (death["count"], death["reason"], death["queue"]) == (2, "rejected", queue)


async def test_queue_ttl_expires_and_dead_letters_with_reason_expired(env: Env) -> None:
    """With ``x-message-ttl`` a message nobody takes in time is dead-lettered as ``expired``,
    to the original routing key when no dead-letter routing key is set."""
    channel = await env.channel()
    exchange, queue, dead = env.exchange("dlx"), env.queue("ttl"), env.queue("dead")
    await channel.exchange_declare(exchange, "fanout")
    await channel.queue_declare(dead)
    await channel.queue_bind(dead, exchange)
    await channel.queue_declare(
        queue, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": exchange}
    )
    inbox = Inbox()
    await channel.consume(dead, inbox, no_ack=True)
    await channel.publish(b"late", queue)
    got = await inbox.next()
    assert (got.body, got.exchange, got.routing_key) == (b"late", exchange, queue)
    death = death_of(got)
    assert (death["reason"], death["queue"], death["routing-keys"]) == ("expired", queue, [queue])
    assert "original-expiration" not in death
    assert await channel.queue_declare(queue, passive=True) == hutch.QueueInfo(queue, 0, 0)


async def test_per_message_expiration_expires_only_at_the_head(env: Env) -> None:
    """A message whose ``expiration`` passed stays behind an unexpired head (RabbitMQ expires
    at the head only); once it reaches the head it is dead-lettered, not delivered."""
    channel, queue, dead, inbox = await dead_letter_setup(env)
    marker = env.queue("marker")
    await channel.queue_declare(
        marker, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    )
    await channel.publish(b"head", queue)
    await channel.publish(hutch.Message(b"behind", expiration=0.03), queue)
    # the marker expires after "behind" would have; its arrival means time has passed
    await channel.publish(hutch.Message(b"marker", expiration=0.06), marker)
    assert (await inbox.next()).body == b"marker"
    assert (await channel.queue_declare(queue, passive=True)).message_count == 2
    head = await channel.get(queue)
    assert head is not None
    assert head.body == b"head"
    await head.ack()
    assert await channel.get(queue) is None
    expired = await inbox.next()
    assert expired.body == b"behind"
    assert death_of(expired)["reason"] == "expired"
    assert death_of(expired)["original-expiration"] == "30"


async def test_ttl_zero_delivers_only_to_a_waiting_consumer(env: Env) -> None:
    """With ``x-message-ttl: 0`` a message with no consumer to take it expires at once; with
    a consumer it is delivered."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue, arguments={"x-message-ttl": 0})
    await channel.publish(b"nobody", queue)
    assert await channel.queue_declare(queue, passive=True) == hutch.QueueInfo(queue, 0, 0)
    inbox = Inbox()
    await channel.consume(queue, inbox, no_ack=True)
    await channel.publish(b"someone", queue)
    assert (await inbox.next()).body == b"someone"


async def test_expired_messages_in_a_cycle_are_dropped(env: Env) -> None:
    """A queue that dead-letters expired messages back to itself drops them the second time
    round (RabbitMQ's cycle detection), instead of circulating them forever."""
    channel = await env.channel()
    exchange, queue, watch = env.exchange("loop"), env.queue("loop"), env.queue("watch")
    await channel.exchange_declare(exchange, "fanout")
    await channel.queue_declare(
        queue, arguments={"x-message-ttl": 30, "x-dead-letter-exchange": exchange}
    )
    await channel.queue_declare(watch)
    await channel.queue_bind(queue, exchange)
    await channel.queue_bind(watch, exchange)
    inbox = Inbox()
    await channel.consume(watch, inbox, no_ack=True)
    await channel.publish(b"first", queue)
    assert (await inbox.next()).body == b"first"
    # Had "first" gone back into the queue, it would expire again before "second" does.
    await channel.publish(b"second", queue)
    assert (await inbox.next()).body == b"second"
    assert [m.body for m in inbox.messages] == [b"first", b"second"]


async def test_max_length_drops_from_the_head_and_dead_letters_maxlen(env: Env) -> None:
    """``x-max-length`` keeps the newest messages: the oldest is dropped (dead-lettered with
    reason ``maxlen``)."""
    channel, queue, _dead, inbox = await dead_letter_setup(env, **{"x-max-length": 2})
    for body in (b"1", b"2", b"3"):
        await channel.publish(body, queue)
    dropped = await inbox.next()
    assert dropped.body == b"1"
    assert death_of(dropped)["reason"] == "maxlen"
    assert await drain(channel, queue) == [b"2", b"3"]


async def test_max_length_bytes_counts_body_bytes(env: Env) -> None:
    """``x-max-length-bytes`` drops from the head until the bodies fit."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue, arguments={"x-max-length-bytes": 5})
    for body in (b"aa", b"bbb", b"c"):
        await channel.publish(body, queue)
    assert await drain(channel, queue) == [b"bbb", b"c"]


async def test_reject_publish_overflow_nacks_the_new_message(env: Env) -> None:
    """With ``x-overflow: reject-publish`` a full queue refuses new messages: a confirmed
    publish raises PublishNacked and the queue keeps the old ones."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(
        queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    await channel.publish(b"kept", queue)
    with pytest.raises(hutch.PublishNacked):
        await channel.publish(b"refused", queue)
    assert await drain(channel, queue) == [b"kept"]
    await channel.publish(b"room-again", queue)
    assert await drain(channel, queue) == [b"room-again"]


async def test_reject_publish_dlx_overflow_dead_letters_the_refused_message(env: Env) -> None:
    """``x-overflow: reject-publish-dlx`` nacks the new message and dead-letters it
    (reason ``maxlen``)."""
    channel, queue, _dead, inbox = await dead_letter_setup(
        env, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"}
    )
    await channel.publish(b"kept", queue)
    with pytest.raises(hutch.PublishNacked):
        await channel.publish(b"refused", queue)
    refused = await inbox.next()
    assert refused.body == b"refused"
    assert death_of(refused)["reason"] == "maxlen"


async def test_priority_queue_delivers_highest_priority_first(env: Env) -> None:
    """With ``x-max-priority`` higher priorities come first (capped at the maximum, FIFO within
    one priority, no priority counting as 0)."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue, arguments={"x-max-priority": 5})
    for priority in (None, 1, 9, 5, 3):
        await channel.publish(hutch.Message(str(priority).encode(), priority=priority), queue)
    assert await drain(channel, queue) == [b"9", b"5", b"3", b"1", b"None"]


async def test_dead_letter_exchange_that_does_not_exist_drops_the_message(env: Env) -> None:
    """Dead-lettering to a missing exchange drops the message quietly (no error anywhere)."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue, arguments={"x-dead-letter-exchange": env.exchange("no")})
    await channel.publish(b"x", queue)
    message = await channel.get(queue)
    assert message is not None
    await message.reject(requeue=False)
    assert await channel.queue_declare(queue, passive=True) == hutch.QueueInfo(queue, 0, 0)
    assert not channel.is_closed
