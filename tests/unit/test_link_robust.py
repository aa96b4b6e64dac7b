"""Robust connections against a scripted fake broker: what is restored and in which order,
retries of locked resources, stale deliveries, bounds, several brokers, hooks and closing."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest
from pamqp import commands as spec

import hutch
from hutch.amqp import Connection, connect, connect_robust
from hutch.amqp import connection as connection_module
from tests.support.fake_amqp import (
    FakeBroker,
    FakeConnection,
    close_channel,
    content_frames,
    handshake_and_serve,
    serve,
)

FAST = {"reconnect_delay": 0.01, "reconnect_max_delay": 0.05}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def names(conn: FakeConnection, channel: int = 1) -> list[str]:
    return [method.name for number, method in conn.methods if number == channel]


async def reconnected(connection: Connection) -> asyncio.Event:
    event = asyncio.Event()
    connection.add_reconnect_callback(lambda _c: event.set())
    return event


def hutch_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("hutch-")}


async def test_restore_replays_qos_confirms_topology_and_consumers_in_order() -> None:
    """After a reconnect each channel is reopened with, in order: confirm mode, QoS,
    exchanges, queues (a server-named one keeps its name), bindings, consumers; the consumer's
    callback and the return listener still work."""
    async with FakeBroker(handshake_and_serve()) as broker:
        connection = await connect_robust(broker.url(), **FAST)
        done = await reconnected(connection)
        channel = await connection.channel()
        await channel.set_qos(7)
        await channel.exchange_declare("ex", "topic")
        queue = (await channel.queue_declare("", exclusive=True)).queue
        assert queue.startswith("hutch.gen-")
        await channel.queue_bind(queue, "ex", "rk")
        bodies: asyncio.Queue[bytes] = asyncio.Queue()
        tag = await channel.consume(queue, lambda message: bodies.put_nowait(message.body))
        returns: list[hutch.Unroutable] = []
        channel.add_return_listener(returns.append)

        broker.connections[0].hang_up()
        await asyncio.wait_for(done.wait(), 5)
        second = broker.connections[1]
        assert names(second) == [
            "Channel.Open",
            "Confirm.Select",
            "Basic.Qos",
            "Exchange.Declare",
            "Queue.Declare",
            "Queue.Bind",
            "Basic.Consume",
        ]
        replayed = {method.name: method for _, method in second.methods}
        assert replayed["Basic.Qos"].prefetch_count == 7
        assert replayed["Exchange.Declare"].exchange_type == "topic"
        assert replayed["Queue.Declare"].queue == queue
        assert replayed["Queue.Declare"].exclusive
        assert (replayed["Queue.Bind"].queue, replayed["Queue.Bind"].routing_key) == (queue, "rk")
        assert replayed["Basic.Consume"].consumer_tag == tag
        assert channel.state is hutch.ChannelState.OPEN

        second.send_method(
            1, spec.Basic.Deliver(consumer_tag=tag, delivery_tag=1, routing_key=queue)
        )
        second.send(content_frames(1, b"after the reconnect"))
        assert await asyncio.wait_for(bodies.get(), 5) == b"after the reconnect"
        second.send_method(
            1,
            spec.Basic.Return(
                reply_code=312, reply_text="NO_ROUTE", exchange="ex", routing_key="nowhere"
            ),
        )
        second.send(content_frames(1, b"returned"))
        await asyncio.wait_for(channel.queue_declare("sync-point"), 5)
        assert [r.message.body for r in returns] == [b"returned"]
        await connection.close()


async def test_locked_exclusive_queue_and_consumer_are_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RESOURCE_LOCKED on an exclusive queue and ACCESS_REFUSED on an exclusive consumer are
    retried (the broker has not yet dropped the old connection) until they succeed."""
    refusals = {"Queue.Declare": 2, "Basic.Consume": 1}

    async def hook(conn: FakeConnection, channel: int, method: Any) -> bool:
        if len(broker.connections) > 1 and refusals.get(method.name, 0) > 0:
            refusals[method.name] -= 1
            code, text = (
                (405, "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue")
                if method.name == "Queue.Declare"
                else (403, "ACCESS_REFUSED - queue in exclusive use")
            )
            await close_channel(conn, channel, code, text, method)
            return True
        return False

    caplog.set_level(logging.INFO, logger="hutch")
    async with FakeBroker(handshake_and_serve(hook)) as broker:
        connection = await connect_robust(broker.url(), **FAST)
        done = await reconnected(connection)
        channel = await connection.channel()
        await channel.queue_declare("solo", exclusive=True)
        await channel.consume("solo", lambda message: None, exclusive=True)
        broker.connections[0].hang_up()
        await asyncio.wait_for(done.wait(), 10)
        assert refusals == {"Queue.Declare": 0, "Basic.Consume": 0}
        assert channel.state is hutch.ChannelState.OPEN
        assert names(broker.connections[1]).count("Channel.Open") == 4
        assert "RESOURCE_LOCKED" in caplog.text
        assert "ACCESS_REFUSED" in caplog.text
        await connection.close()


async def test_lock_that_outlasts_the_bound_closes_only_that_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A queue still locked when the retry bound ends closes its channel with ResourceLocked
    (close listeners told); other channels and the connection carry on."""
    monkeypatch.setattr(connection_module, "_LOCK_WAIT_MIN", 0.5)

    async def hook(conn: FakeConnection, channel: int, method: Any) -> bool:
        if (
            len(broker.connections) > 1
            and isinstance(method, spec.Queue.Declare)
            and method.queue == "held"
        ):
            await close_channel(conn, channel, 405, "RESOURCE_LOCKED", method)
            return True
        return False

    async with FakeBroker(handshake_and_serve(hook)) as broker:
        # heartbeat=0: the lock bound is then _LOCK_WAIT_MIN alone
        connection = await connect_robust(broker.url("heartbeat=0"), **FAST)
        done = await reconnected(connection)
        held = await connection.channel()
        await held.queue_declare("held", exclusive=True)
        other = await connection.channel()
        await other.queue_declare("free")
        closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        held.add_close_listener(lambda _ch, error: closed.set_result(error))
        broker.connections[0].hang_up()
        await asyncio.wait_for(done.wait(), 10)
        assert isinstance(await asyncio.wait_for(closed, 5), hutch.ResourceLocked)
        assert held.is_closed
        with pytest.raises(hutch.ResourceLocked):
            await held.queue_declare("x")
        assert other.state is hutch.ChannelState.OPEN
        await other.publish(b"still fine", "free")
        assert connection.is_connected
        await connection.close()


async def test_stale_delivery_is_dropped_with_a_warning_not_acked_on_the_new_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Acking a delivery of the old connection after a reconnect sends nothing and warns;
    the restored channel stays open."""

    async def hook(conn: FakeConnection, channel: int, method: Any) -> bool:
        if isinstance(method, spec.Basic.Consume) and len(broker.connections) == 1:
            conn.send_method(channel, spec.Basic.ConsumeOk(consumer_tag=method.consumer_tag))
            conn.send_method(
                channel,
                spec.Basic.Deliver(
                    consumer_tag=method.consumer_tag, delivery_tag=1, routing_key="q"
                ),
            )
            conn.send(content_frames(channel, b"held"))
            return True
        return False

    async with FakeBroker(handshake_and_serve(hook)) as broker:
        connection = await connect_robust(broker.url(), **FAST)
        done = await reconnected(connection)
        channel = await connection.channel()
        got: asyncio.Queue[hutch.IncomingMessage] = asyncio.Queue()
        await channel.consume("q", got.put_nowait)
        message = await asyncio.wait_for(got.get(), 5)
        broker.connections[0].hang_up()
        await asyncio.wait_for(done.wait(), 5)
        caplog.set_level(logging.WARNING, logger="hutch")
        await message.ack()
        await channel.publish(b"after", "q")
        assert "not settling delivery 1" in caplog.text
        assert "Basic.Ack" not in names(broker.connections[1])
        assert channel.state is hutch.ChannelState.OPEN
        await connection.close()


async def test_publish_during_a_reconnect_waits_and_goes_out_on_the_new_connection() -> None:
    """A publish made while reconnecting waits for the restored channel and is confirmed
    there, not failed at once."""
    second_connection = asyncio.Event()

    async def script(conn: FakeConnection) -> None:
        if len(broker.connections) > 1:
            second_connection.set()
            await asyncio.sleep(0.3)  # a slow broker: the publish below arrives meanwhile
        await conn.handshake()
        await serve(conn)

    async with FakeBroker(script) as broker:
        connection = await connect_robust(broker.url(), **FAST)
        channel = await connection.channel()
        broker.connections[0].hang_up()
        await asyncio.wait_for(second_connection.wait(), 5)
        assert connection.state is hutch.ConnectionState.RECONNECTING
        await asyncio.wait_for(channel.publish(b"during", "q"), 5)
        assert "Basic.Publish" in names(broker.connections[1])
        await connection.close()


async def test_publish_fails_in_time_when_the_broker_stays_away() -> None:
    """With the broker gone longer than reconnect_timeout, publish raises ConnectionLost
    after that bound (not at once, not never)."""
    async with FakeBroker(handshake_and_serve()) as broker:
        connection = await connect_robust(broker.url(), reconnect_timeout=0.5, **FAST)
        channel = await connection.channel()
        lost = asyncio.Event()
        connection.add_disconnect_callback(lambda _c, _e: lost.set())
        broker.stop_listening()
        broker.connections[0].hang_up()
        await asyncio.wait_for(lost.wait(), 5)
        started = time.monotonic()
        with pytest.raises(hutch.ConnectionLost, match=r"not restored within 0\.5 s"):
            await channel.publish(b"x", "q")
        took = time.monotonic() - started
        assert 0.4 <= took < 2.5, took
        with pytest.raises(hutch.ConnectionLost, match=r"within 0\.5 s"):
            await connection.channel()
        await connection.close()


async def test_unconfirmed_publish_raises_when_the_connection_drops_then_succeeds_again() -> None:
    """A publish whose confirm was outstanding raises ConnectionLost; publishing it again after
    the reconnect is confirmed (at least once)."""

    async def hook(conn: FakeConnection, channel: int, method: Any) -> bool:
        if isinstance(method, spec.Basic.Publish) and len(broker.connections) == 1:
            conn.hang_up()
            return True
        return False

    async with FakeBroker(handshake_and_serve(hook)) as broker:
        connection = await connect_robust(broker.url(), **FAST)
        channel = await connection.channel()
        with pytest.raises(hutch.ConnectionLost):
            await asyncio.wait_for(channel.publish(b"1", "q"), 5)
        await asyncio.wait_for(channel.publish(b"1", "q"), 5)
        await connection.close()


async def test_first_connect_retries_until_the_broker_comes_up() -> None:
    """connect_robust keeps trying while nothing listens yet (a service that starts before its
    broker) and connects once the broker is there."""
    port = free_port()
    broker = FakeBroker(handshake_and_serve(), port=port)

    async def start_later() -> None:
        await asyncio.sleep(0.4)
        await broker.listen()

    starter = asyncio.ensure_future(start_later())
    try:
        connection = await connect_robust(
            f"amqp://guest:guest@127.0.0.1:{port}/", initial_connect_timeout=10, **FAST
        )
        assert connection.is_connected
        await connection.close()
    finally:
        await starter
        await broker.__aexit__(None, None, None)


async def test_first_connect_gives_up_after_its_bound_with_a_clear_error() -> None:
    """With no broker at all, connect_robust raises ConnectError after initial_connect_timeout;
    plain connect (and initial_connect_timeout=0) tries once and raises at once."""
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    started = time.monotonic()
    with pytest.raises(hutch.ConnectError, match=r"gave up after retrying for 0\.5 s"):
        await connect_robust(url, initial_connect_timeout=0.5, **FAST)
    assert 0.3 < time.monotonic() - started < 3
    started = time.monotonic()
    with pytest.raises(hutch.ConnectError, match="could not connect"):
        await connect(url)
    with pytest.raises(hutch.ConnectError, match="could not connect"):
        await connect_robust(url, initial_connect_timeout=0)
    assert time.monotonic() - started < 1


async def test_first_connect_bound_also_caps_a_hanging_handshake() -> None:
    """A broker that accepts but never answers does not stretch initial_connect_timeout to
    connection_timeout."""

    async def silent(conn: FakeConnection) -> None:
        await asyncio.Event().wait()

    async with FakeBroker(silent) as broker:
        started = time.monotonic()
        with pytest.raises(hutch.ConnectError, match="gave up"):
            await connect_robust(
                broker.url("connection_timeout=30"), initial_connect_timeout=0.5, **FAST
            )
        assert time.monotonic() - started < 3


async def test_refused_login_is_not_retried_by_the_first_connect() -> None:
    """A wrong password fails connect_robust at once with AuthenticationError."""

    async def refuse(conn: FakeConnection) -> None:
        await conn.reader.readexactly(8)
        conn.send_method(0, spec.Connection.Start(mechanisms="PLAIN", locales="en_US"))
        await conn.expect(spec.Connection.StartOk)
        conn.send_method(
            0,
            spec.Connection.Close(
                reply_code=403, reply_text="ACCESS_REFUSED", class_id=0, method_id=0
            ),
        )
        await conn.expect(spec.Connection.CloseOk)

    async with FakeBroker(refuse) as broker:
        with pytest.raises(hutch.AuthenticationError):
            await connect_robust(broker.url(), initial_connect_timeout=10, **FAST)
        assert len(broker.connections) == 1


async def test_several_urls_are_tried_in_turn() -> None:
    """A list of URLs, or one URL naming several hosts, connects to the first that answers."""
    dead = free_port()
    async with FakeBroker(handshake_and_serve()) as broker:
        as_list = await connect_robust(
            [f"amqp://guest:guest@127.0.0.1:{dead}/", broker.url()], **FAST
        )
        assert f":{broker.port}/" in as_list.url
        await as_list.close()
        hosts = f"amqp://guest:guest@127.0.0.1:{dead},127.0.0.1:{broker.port}/"
        as_hosts = await connect_robust(hosts, **FAST)
        assert f":{broker.port}/" in as_hosts.url
        await as_hosts.close()


async def test_losing_one_broker_moves_the_connection_to_the_next() -> None:
    """When the broker in use goes away, the reconnect goes to the next URL and restores the
    channels there."""
    async with (
        FakeBroker(handshake_and_serve()) as first,
        FakeBroker(handshake_and_serve()) as second,
    ):
        connection = await connect_robust([first.url(), second.url()], **FAST)
        done = await reconnected(connection)
        channel = await connection.channel()
        await channel.queue_declare("q")
        first.stop_listening()
        first.connections[0].hang_up()
        await asyncio.wait_for(done.wait(), 5)
        assert f":{second.port}/" in connection.url
        assert "Queue.Declare" in names(second.connections[0])
        await channel.publish(b"x", "q")
        await connection.close()


async def test_hooks_and_state_follow_a_reconnect_and_a_close() -> None:
    """Disconnect, reconnect and close callbacks run in that order; the state reads
    connected, reconnecting, connected, closed."""
    events: list[tuple[str, hutch.ConnectionState]] = []
    async with FakeBroker(handshake_and_serve()) as broker:
        connection = await connect_robust(broker.url(), **FAST)
        done = asyncio.Event()
        closed = asyncio.Event()

        def on_disconnect(conn: Connection, error: BaseException) -> None:
            assert isinstance(error, hutch.ConnectionLost)
            events.append(("disconnect", conn.state))

        async def on_reconnect(conn: Connection) -> None:
            events.append(("reconnect", conn.state))
            done.set()

        def on_close(conn: Connection, error: BaseException | None) -> None:
            assert error is None
            events.append(("close", conn.state))
            closed.set()

        connection.add_disconnect_callback(on_disconnect)
        connection.add_reconnect_callback(on_reconnect)
        connection.add_close_callback(on_close)
        assert connection.state is hutch.ConnectionState.CONNECTED
        broker.connections[0].hang_up()
        await asyncio.wait_for(done.wait(), 5)
        await connection.close()
        await asyncio.wait_for(closed.wait(), 5)
        assert events == [
            ("disconnect", hutch.ConnectionState.RECONNECTING),
            ("reconnect", hutch.ConnectionState.CONNECTED),
            ("close", hutch.ConnectionState.CLOSED),
        ]


async def test_close_while_reconnecting_stops_and_releases_every_task() -> None:
    """close() during endless reconnect attempts returns promptly, fails the waiters with
    ConnectionClosed and leaves no hutch task behind."""
    before = hutch_tasks()
    async with FakeBroker(handshake_and_serve()) as broker:
        connection = await connect_robust(broker.url(), reconnect_timeout=30, **FAST)
        channel = await connection.channel()
        lost = asyncio.Event()
        connection.add_disconnect_callback(lambda _c, _e: lost.set())
        broker.stop_listening()
        broker.connections[0].hang_up()
        await asyncio.wait_for(lost.wait(), 5)
        assert connection.state is hutch.ConnectionState.RECONNECTING
        waiting = asyncio.ensure_future(channel.publish(b"x", "q"))
        started = time.monotonic()
        await connection.close()
        assert time.monotonic() - started < 2
        assert connection.state is hutch.ConnectionState.CLOSED
        with pytest.raises(hutch.ConnectionClosed):
            await asyncio.wait_for(waiting, 2)
        assert hutch_tasks() - before == set()
        assert channel.is_closed


async def test_connection_lost_again_while_restoring_reconnects_once_more() -> None:
    """If the new connection drops in the middle of the restore, hutch reconnects again and
    finishes the restore on a third connection."""

    async def hook(conn: FakeConnection, channel: int, method: Any) -> bool:
        if len(broker.connections) == 2 and isinstance(method, spec.Queue.Declare):
            conn.hang_up()
            return True
        return False

    async with FakeBroker(handshake_and_serve(hook)) as broker:
        connection = await connect_robust(broker.url(), **FAST)
        done = await reconnected(connection)
        channel = await connection.channel()
        await channel.queue_declare("q")
        broker.connections[0].hang_up()
        await asyncio.wait_for(done.wait(), 5)
        assert len(broker.connections) == 3
        assert "Queue.Declare" in names(broker.connections[2])
        assert channel.state is hutch.ChannelState.OPEN
        await connection.close()


async def test_channel_closed_by_the_broker_is_reopened_with_its_state() -> None:
    """On a robust connection a channel error raises to the caller, then the channel reopens by
    itself with its consumers; close listeners are not told (it is not closed for good)."""

    async def hook(conn: FakeConnection, channel: int, method: Any) -> bool:
        if isinstance(method, spec.Queue.Declare) and method.passive:
            await close_channel(conn, channel, 404, "NOT_FOUND - no queue 'gone'", method)
            return True
        return False

    async with FakeBroker(handshake_and_serve(hook)) as broker:
        connection = await connect_robust(broker.url(), **FAST)
        channel = await connection.channel()
        await channel.consume("q", lambda message: None, consumer_tag="keep")
        closings: list[object] = []
        channel.add_close_listener(lambda ch, error: closings.append(error))
        with pytest.raises(hutch.NotFound, match="404 NOT_FOUND - no queue 'gone'"):
            await channel.queue_declare("gone", passive=True)
        await asyncio.wait_for(channel.queue_declare("next"), 5)
        sent = names(broker.connections[0])
        assert sent.count("Channel.Open") == 2
        assert sent.count("Basic.Consume") == 2
        assert channel.state is hutch.ChannelState.OPEN
        assert closings == []
        await connection.close()


async def test_channel_binding_to_another_channels_exchange_is_restored_after_it() -> None:
    """A binding to an exchange declared on a later channel is retried after that channel is
    restored, instead of failing the first channel."""

    async def hook(conn: FakeConnection, channel: int, method: Any) -> bool:
        declared = {m.exchange for _, m in conn.methods if isinstance(m, spec.Exchange.Declare)}
        if isinstance(method, spec.Queue.Bind) and method.exchange not in declared:
            await close_channel(conn, channel, 404, "NOT_FOUND - no exchange", method)
            return True
        return False

    async with FakeBroker(handshake_and_serve(hook)) as broker:
        connection = await connect_robust(broker.url(), **FAST)
        done = await reconnected(connection)
        binder = await connection.channel()
        declarer = await connection.channel()
        await declarer.exchange_declare("ex", "fanout")
        await binder.queue_declare("q")
        await binder.queue_bind("q", "ex")
        broker.connections[0].hang_up()
        await asyncio.wait_for(done.wait(), 5)
        assert binder.state is hutch.ChannelState.OPEN
        assert declarer.state is hutch.ChannelState.OPEN
        assert names(broker.connections[1], 1).count("Queue.Bind") == 2
        await connection.close()


async def test_a_broker_that_drops_every_connection_is_not_hammered() -> None:
    """Connections that die right after the handshake are retried with growing delays, not in
    a tight loop."""

    async def drop(conn: FakeConnection) -> None:
        await conn.handshake()
        if len(broker.connections) > 1:
            return  # hang up at once
        await serve(conn)

    async with FakeBroker(drop) as broker:
        connection = await connect_robust(broker.url(), reconnect_delay=0.1, reconnect_max_delay=5)
        broker.connections[0].hang_up()
        await asyncio.sleep(1.5)
        # Delays of 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.4-0.8 s: at most five attempts in 1.5 s.
        assert 2 <= len(broker.connections) <= 6, len(broker.connections)
        await connection.close()


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    """Delays start at reconnect_delay, double per attempt, stop at reconnect_max_delay, and
    are jittered between half and all of that."""
    connection = Connection(
        connection_module._endpoints("amqp://h/"), reconnect_delay=0.5, reconnect_max_delay=4
    )
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0), (5000, 4.0)]:
        delays = [connection._backoff(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, delays)


async def test_consume_during_a_reconnect_is_sent_once() -> None:
    """A consume started while reconnecting goes out once on the new connection (a replayed
    copy would make the broker refuse the reused consumer tag)."""
    second_connection = asyncio.Event()

    async def script(conn: FakeConnection) -> None:
        if len(broker.connections) > 1:
            second_connection.set()
            await asyncio.sleep(0.3)
        await conn.handshake()
        await serve(conn)

    async with FakeBroker(script) as broker:
        connection = await connect_robust(broker.url(), **FAST)
        channel = await connection.channel()
        broker.connections[0].hang_up()
        await asyncio.wait_for(second_connection.wait(), 5)
        tag = await asyncio.wait_for(channel.consume("q", lambda message: None), 5)
        consumes = [
            method
            for _, method in broker.connections[1].methods
            if isinstance(method, spec.Basic.Consume)
        ]
        assert [method.consumer_tag for method in consumes] == [tag]
        await connection.close()
