"""The AMQP client against the real broker: the basic round trips."""

from __future__ import annotations

import asyncio

import pytest

import hutch


async def test_publish_then_get_returns_the_body_and_properties(amqp_url: str, name: str) -> None:
    """A message published with properties comes back from ``get`` with the same values."""
    async with await hutch.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(name, auto_delete=True)
        sent = hutch.Message(
            b"payload",
            content_type="application/json",
            headers={"n": 1, "s": "x"},
            correlation_id="c-1",
            expiration=30,
            priority=3,
        )
        await channel.publish(sent, name)
        got = await channel.get(name)
        assert got is not None
        assert got.body == b"payload"
        assert got.content_type == "application/json"
        assert got.headers == {"n": 1, "s": "x"}
        assert got.correlation_id == "c-1"
        assert got.expiration == 30
        assert got.priority == 3
        assert got.routing_key == name
        await got.ack()
        assert await channel.get(name) is None


async def test_consumer_receives_every_message_in_order(amqp_url: str, name: str) -> None:
    """A consumer sees each published message once, in publish order."""
    async with await hutch.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(name, auto_delete=True)
        received: list[bytes] = []
        done = asyncio.Event()

        async def on_message(message: hutch.IncomingMessage) -> None:
            received.append(message.body)
            await message.ack()
            if len(received) == 100:
                done.set()

        await channel.consume(name, on_message)
        await asyncio.gather(*(channel.publish(str(i).encode(), name) for i in range(100)))
        await asyncio.wait_for(done.wait(), 10)
        assert received == [str(i).encode() for i in range(100)]


async def test_mandatory_publish_without_a_queue_raises_unroutable(
    amqp_url: str, name: str
) -> None:
    """A mandatory message no queue takes raises ``Unroutable`` naming the routing key."""
    async with await hutch.connect(amqp_url) as connection:
        channel = await connection.channel()
        with pytest.raises(hutch.Unroutable, match=name):
            await channel.publish(b"x", name, mandatory=True)
        # the channel is still usable afterwards
        await channel.queue_declare(name, auto_delete=True)
        await channel.publish(b"y", name, mandatory=True)
