"""Contract: publishing, confirms, returns, properties and channel errors as on RabbitMQ."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

import hutch
from tests.contract.conftest import WAIT, CloseWatch, Env, Inbox, drain


async def test_properties_come_back_as_rabbitmq_delivers_them(env: Env) -> None:
    """Every property survives the trip, in the form the wire gives it: ``expiration`` in whole
    milliseconds, ``timestamp`` as an aware datetime truncated to seconds, headers decoded."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    stamp = datetime.datetime(2024, 5, 6, 7, 8, 9, 654321, tzinfo=datetime.UTC)
    sent = hutch.Message(
        b"payload",
        content_type="application/json",
        content_encoding="utf-8",
        headers={"n": 1, "big": 2**40, "s": "x", "f": 1.5, "l": [1, "a"], "t": {"k": True}},
        delivery_mode=2,
        priority=3,
        correlation_id="c-1",
        reply_to="replies",
        expiration=30.0004,
        message_id="m-1",
        timestamp=stamp,
        type="call",
        app_id="tests",
    )
    await channel.publish(sent, queue)
    got = await channel.get(queue, no_ack=True)
    assert got is not None
    assert got.properties() == {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": {"n": 1, "big": 2**40, "s": "x", "f": 1.5, "l": [1, "a"], "t": {"k": True}},
        "delivery_mode": 2,
        "priority": 3,
        "correlation_id": "c-1",
        "reply_to": "replies",
        "expiration": 30.0,
        "message_id": "m-1",
        "timestamp": stamp.replace(microsecond=0),
        "type": "call",
        "app_id": "tests",
    }
    assert (got.body, got.exchange, got.routing_key) == (b"payload", "", queue)


async def test_publisher_and_consumers_share_no_mutable_state(env: Env) -> None:
    """Changing a message after publishing it, or one consumer changing its copy's headers,
    changes nothing anyone else receives."""
    channel = await env.channel()
    exchange = env.exchange()
    first, second = env.queue("a"), env.queue("b")
    await channel.exchange_declare(exchange, "fanout")
    for queue in (first, second):
        await channel.queue_declare(queue)
        await channel.queue_bind(queue, exchange)
    headers: dict[str, Any] = {"list": [1, 2], "table": {"k": "v"}}
    sent = hutch.Message(b"x", headers=headers, message_id="original")
    await channel.publish(sent, "", exchange=exchange)
    headers["list"].append(3)
    headers["new"] = "added later"
    sent.message_id = "changed"
    one = await channel.get(first, no_ack=True)
    assert one is not None
    assert one.headers is not None
    one.headers["list"].append("mine")
    one.headers["table"]["k"] = "mine"
    two = await channel.get(second, no_ack=True)
    assert two is not None
    assert two.headers == {"list": [1, 2], "table": {"k": "v"}}
    assert two.message_id == "original"


async def test_mandatory_unroutable_raises_and_calls_return_listeners(env: Env) -> None:
    """A confirmed mandatory publish no queue takes raises Unroutable (312 NO_ROUTE) carrying
    the message; the channel's return listeners hear of it; the channel stays usable."""
    channel = await env.channel()
    queue = env.queue()
    returned: list[hutch.Unroutable] = []
    channel.add_return_listener(returned.append)
    with pytest.raises(hutch.Unroutable) as caught:
        await channel.publish(hutch.Message(b"lost", message_id="m"), queue, mandatory=True)
    error = caught.value
    assert (error.exchange, error.routing_key, error.reply_code) == ("", queue, 312)
    assert error.reply_text == "NO_ROUTE"
    assert error.message.body == b"lost"
    assert error.message.message_id == "m"
    assert [e.routing_key for e in returned] == [queue]
    await channel.publish(b"not mandatory", queue)  # dropped quietly
    await channel.queue_declare(queue)
    await channel.publish(b"routed", queue, mandatory=True)
    assert await drain(channel, queue) == [b"routed"]


async def test_without_confirms_a_return_only_reaches_the_listeners(env: Env) -> None:
    """Without publisher confirms ``publish`` returns at once; an unroutable mandatory
    message is reported to the return listeners only."""
    channel = await env.channel(publisher_confirms=False)
    returned: asyncio.Queue[hutch.Unroutable] = asyncio.Queue()
    channel.add_return_listener(returned.put_nowait)
    queue = env.queue()
    await channel.publish(b"lost", queue, mandatory=True)
    error = await asyncio.wait_for(returned.get(), WAIT)
    assert (error.routing_key, error.message.body) == (queue, b"lost")


async def test_publish_nowait_returns_a_future_of_the_confirm(env: Env) -> None:
    """``publish_nowait`` gives a future per message that resolves when the broker has it, or
    fails as ``publish`` would."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    futures = [channel.publish_nowait(str(i).encode(), queue) for i in range(10)]
    await asyncio.wait_for(asyncio.gather(*futures), WAIT)
    lost = channel.publish_nowait(b"x", env.queue("nobody"), mandatory=True)
    with pytest.raises(hutch.Unroutable):
        await asyncio.wait_for(lost, WAIT)
    assert await drain(channel, queue) == [str(i).encode() for i in range(10)]


async def test_publishing_to_a_missing_exchange_is_not_found_and_closes_the_channel(
    env: Env,
) -> None:
    """Publishing to an exchange that does not exist is NOT_FOUND: the publish raises it (with
    confirms) and the channel is closed."""
    channel = await env.channel()
    exchange = env.exchange("missing")
    watch = CloseWatch(channel)
    with pytest.raises(hutch.NotFound, match=f"NOT_FOUND - no exchange '{exchange}'"):
        await channel.publish(b"x", "key", exchange=exchange)
    assert isinstance(await watch.error(), hutch.NotFound)
    with pytest.raises(hutch.NotFound):
        await channel.publish(b"x", "key")


async def test_without_confirms_a_missing_exchange_still_closes_the_channel(env: Env) -> None:
    """Without confirms, publishing to a missing exchange returns, and the broker closes the
    channel."""
    channel = await env.channel(publisher_confirms=False)
    watch = CloseWatch(channel)
    await channel.publish(b"x", "key", exchange=env.exchange("missing"))
    assert isinstance(await watch.error(), hutch.NotFound)


async def test_a_robust_channel_stays_usable_after_a_channel_error(env: Env) -> None:
    """On a robust connection a broker-side channel error fails the operation, and the channel
    (with its consumer) keeps working afterwards."""
    connection = await env.connect(robust=True)
    channel = await connection.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    inbox = Inbox(ack=True)
    await channel.consume(queue, inbox)
    with pytest.raises(hutch.NotFound):
        await channel.publish(b"x", "key", exchange=env.exchange("missing"))
    await channel.publish(b"after", queue)
    assert (await inbox.next()).body == b"after"
    assert not channel.is_closed


async def test_closed_channel_and_connection_refuse_work(env: Env) -> None:
    """After ``close()`` (idempotent) a channel or connection raises ConnectionClosed."""
    connection = await env.connect()
    channel = await connection.channel()
    await channel.close()
    await channel.close()
    assert channel.is_closed
    with pytest.raises(hutch.ConnectionClosed):
        await channel.publish(b"x", "q")
    with pytest.raises(hutch.ConnectionClosed):
        await channel.queue_declare("q")
    other = await connection.channel()
    await connection.close()
    await connection.close()
    assert connection.is_closed
    assert other.is_closed
    with pytest.raises(hutch.ConnectionClosed):
        await other.get("q")
    with pytest.raises(hutch.ConnectionClosed):
        await connection.channel()


async def test_close_listeners_and_callbacks_hear_of_the_close(env: Env) -> None:
    """A channel's close listeners get ``None`` for ``close()``; a connection's close
    callbacks have run when ``close()`` returns."""
    connection = await env.connect()
    channel = await connection.channel()
    heard: list[object] = []
    channel.add_close_listener(lambda ch, error: heard.append(("channel", error)))
    connection.add_close_callback(lambda conn, error: heard.append(("connection", error)))
    await channel.close()
    await connection.close()
    assert heard == [("channel", None), ("connection", None)]


@pytest.mark.parametrize("robust", [False, True], ids=["plain", "robust"])
async def test_error_listeners_hear_of_every_channel_error(env: Env, robust: bool) -> None:
    """A channel error reaches the channel's error listeners with the error, on a plain
    connection (where close listeners hear of it too) and on a robust one (where the channel
    reopens and is not closed for good)."""
    connection = await env.connect(robust=robust)
    channel = await connection.channel()
    errors: list[BaseException] = []
    closes: list[object] = []
    channel.add_error_listener(lambda ch, error: errors.append(error))
    channel.add_close_listener(lambda ch, error: closes.append(error))
    with pytest.raises(hutch.NotFound):
        await channel.queue_declare(env.queue("missing"), passive=True)
    assert len(errors) == 1
    assert isinstance(errors[0], hutch.NotFound)
    assert errors[0].reply_code == 404
    if robust:
        assert closes == []
        await channel.queue_declare(env.queue("after"))  # reopened
    else:
        assert closes == errors
