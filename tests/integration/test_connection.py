"""Connections against the real broker: handshake and tuning, heartbeats, refused logins and
vhosts, permissions, blocked publishers, closing, and waiters on a lost connection."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import quote

import pytest
import uvloop

import hutch
from hutch.amqp import connect
from hutch.amqp.link import BufferedLink
from tests.support.brokers import Broker
from tests.support.logwatch import LogWatch
from tests.support.proxy import Proxy

SECRET = "n0t-the-Pa55word"


def with_credentials(url: str, user: str, password: str, vhost: str = "") -> str:
    host = url.split("@", 1)[1].split("/", 1)[0]
    return (
        f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}/{quote(vhost, safe='')}"
    )


async def test_handshake_reports_the_broker_and_negotiated_settings(amqp_url: str) -> None:
    """The broker's properties are read and the URL's heartbeat is what both sides use."""
    async with await connect(f"{amqp_url}?heartbeat=3&name=hutch-test") as connection:
        assert connection.server_properties["product"] == "RabbitMQ"
        assert connection.heartbeat == 3
        assert connection.is_connected


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_each_loop_gets_the_link_that_reads_cheapest_on_it(
    amqp_url: str, name: str, loop: str
) -> None:
    """On asyncio's loop the socket reads into the link's own buffer (``BufferedLink``); on
    uvloop, which reads into a buffer of its own, the link is a plain protocol. Either way a
    message makes the round trip."""
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop

    async def scenario() -> None:
        connection = await connect(amqp_url)
        try:
            link = connection._link
            assert isinstance(link, BufferedLink) == (loop == "asyncio")
            assert isinstance(link, asyncio.BufferedProtocol) == (loop == "asyncio")
            channel = await connection.channel()
            await channel.queue_declare(name, auto_delete=True)
            await channel.publish(b"there and back", name)
            message = await channel.get(name)
            assert message is not None
            assert message.body == b"there and back"
            await message.ack()
        finally:
            await connection.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())


async def test_small_frame_max_splits_large_bodies_correctly(amqp_url: str, name: str) -> None:
    """With frame_max=4096 a 100 kB body goes out in many frames and comes back intact."""
    async with await connect(f"{amqp_url}?frame_max=4096") as connection:
        channel = await connection.channel()
        await channel.queue_declare(name, auto_delete=True)
        body = bytes(range(256)) * 400
        await channel.publish(body, name)
        got = await channel.get(name, no_ack=True)
        assert got is not None
        assert got.body == body


async def test_channel_max_is_enforced_with_a_clear_error(amqp_url: str) -> None:
    """With channel_max=2 a third channel raises an error saying all channels are in use."""
    async with await connect(f"{amqp_url}?channel_max=2") as connection:
        await connection.channel()
        await connection.channel()
        with pytest.raises(hutch.HutchError, match="all 2 channels"):
            await connection.channel()


async def test_idle_connection_survives_several_heartbeat_intervals(amqp_url: str) -> None:
    """With heartbeat=1 an idle connection stays up for 3 s: hutch sends heartbeats (else the
    broker would hang up) and hears the broker's (else hutch would)."""
    async with await connect(f"{amqp_url}?heartbeat=1") as connection:
        lost: list[BaseException | None] = []
        connection.add_close_callback(lambda _c, error: lost.append(error))
        await asyncio.sleep(3)  # the idle time under test, not a wait for something
        assert lost == []
        assert connection.is_connected
        channel = await connection.channel()
        await channel.queue_declare("", exclusive=True)


async def test_close_with_reason_and_async_with(amqp_url: str) -> None:
    """close(reason) closes cleanly and quickly; ``async with`` closes too; closing twice is
    fine and a closed connection refuses new channels."""
    connection = await connect(amqp_url)
    channel = await connection.channel()
    started = time.monotonic()
    await connection.close("done for today")
    assert time.monotonic() - started < 1
    assert connection.is_closed
    assert channel.is_closed
    await connection.close()
    with pytest.raises(hutch.ConnectionClosed):
        await connection.channel()
    async with await connect(amqp_url) as other:
        assert other.is_connected
    assert other.is_closed


async def test_lost_connection_fails_publish_declare_and_get(amqp_url: str, name: str) -> None:
    """When the connection drops, a publish awaiting its confirm, a declare and a get each
    raise ConnectionLost (a ConnectionError) instead of waiting forever."""
    async with Proxy.to(amqp_url) as proxy:
        connection = await connect(proxy.url(amqp_url))
        channel = await connection.channel()
        other = await connection.channel()
        await channel.queue_declare(name, auto_delete=True)
        proxy.black_hole()  # the requests below go out and get no answer
        calls = [
            asyncio.ensure_future(channel.publish(b"x", name)),
            asyncio.ensure_future(other.queue_declare(f"{name}.2")),
            asyncio.ensure_future(other.get(name)),
        ]
        await asyncio.sleep(0.1)
        assert not any(call.done() for call in calls)
        proxy.cut()
        done, pending = await asyncio.wait(calls, timeout=5)
        assert not pending
        for call in done:
            assert isinstance(call.exception(), hutch.ConnectionLost)
            assert isinstance(call.exception(), ConnectionError)
        assert connection.is_closed
        await connection.close()


# -- refusals and permissions (private node: users and vhosts of our own) -------------------


@pytest.fixture(scope="module")
def accounts(private_rabbitmq: Broker) -> Broker:
    """A vhost, a user without permissions, and a user allowed nothing on that vhost."""
    node = private_rabbitmq.node
    assert node is not None
    node.ctl("add_vhost", "hutch-v1")
    node.ctl("add_user", "hutch-nobody", SECRET)
    node.ctl("add_user", "hutch-limited", SECRET)
    node.ctl("set_permissions", "-p", "hutch-v1", "hutch-limited", "^$", "^$", "^$")
    return private_rabbitmq


async def test_wrong_password_is_an_authentication_error(
    accounts: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password raises AuthenticationError in words, without the password in it or in
    the log; connect_robust does not retry it."""
    caplog.set_level(logging.DEBUG)
    url = with_credentials(accounts.url, "guest", SECRET)
    with pytest.raises(hutch.AuthenticationError, match="refused the login of user 'guest'") as e:
        await connect(url)
    assert "403" in str(e.value)
    started = time.monotonic()
    with pytest.raises(hutch.AuthenticationError):
        await hutch.connect_robust(url, initial_connect_timeout=10)
    assert time.monotonic() - started < 2
    assert SECRET not in str(e.value)
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("user", "vhost", "words"),
    [
        ("hutch-nobody", "/", "refused for user 'hutch-nobody'"),
        ("guest", "hutch-no-such-vhost", "not found"),
    ],
)
async def test_refused_vhost_is_a_virtual_host_error(
    accounts: Broker, user: str, vhost: str, words: str
) -> None:
    """A vhost the user may not use, or that does not exist, raises VirtualHostError naming
    the vhost and the broker's 530 text (aio-pika hides this behind a frame error)."""
    password = SECRET if user != "guest" else "guest"
    with pytest.raises(hutch.VirtualHostError, match=f"virtual host '{vhost}'") as caught:
        await connect(with_credentials(accounts.url, user, password, vhost))
    assert "530" in str(caught.value)
    assert words in str(caught.value)


async def test_access_refused_on_a_channel_leaves_the_connection_usable(
    accounts: Broker,
) -> None:
    """A user without configure permission gets 403 ACCESS_REFUSED naming the queue; the
    connection still works."""
    url = with_credentials(accounts.url, "hutch-limited", SECRET, "hutch-v1")
    async with await connect(url) as connection:
        channel = await connection.channel()
        with pytest.raises(hutch.AccessRefused, match=r"403 ACCESS_REFUSED .*'forbidden'"):
            await channel.queue_declare("forbidden")
        fresh = await connection.channel()
        with pytest.raises(hutch.AccessRefused, match=r"amq\.default"):
            await fresh.publish(b"x", "anything")
        assert connection.is_connected


@pytest.mark.slow
async def test_blocked_connection_makes_publishers_wait(private_rabbitmq: Broker) -> None:
    """Under a memory alarm the broker blocks the connection: a publish waits (and a bounded
    one times out saying why), the connection is not mistaken for dead over several heartbeat
    intervals; after the alarm clears both publishes go through."""
    node = private_rabbitmq.node
    assert node is not None
    async with await connect(f"{private_rabbitmq.url}?heartbeat=1") as connection:
        channel = await connection.channel()
        queue = (await channel.queue_declare("", exclusive=True)).queue
        async with LogWatch("blocked publishing") as blocked:
            await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", "0.00001")
            try:
                # RabbitMQ blocks a connection once it publishes: this one triggers it.
                first = asyncio.ensure_future(channel.publish(b"first", queue))
                await blocked.wait(15)
                with pytest.raises(hutch.HutchTimeoutError, match="blocked this connection"):
                    await channel.publish(b"bounded", queue, timeout=0.3)
                waiting = asyncio.ensure_future(channel.publish(b"second", queue))
                await asyncio.sleep(3)  # the time it must keep waiting: 3 heartbeat intervals
                assert not waiting.done()
                assert connection.is_connected
            finally:
                await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", "0.4")
        await asyncio.wait_for(asyncio.gather(first, waiting), 15)
        bodies = []
        while (got := await channel.get(queue, no_ack=True)) is not None:
            bodies.append(got.body)
        assert b"second" in bodies
        assert b"first" in bodies
