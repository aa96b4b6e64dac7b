"""The connection against a scripted fake broker: handshake, heartbeats, blocking, closing,
refusals, lost connections and malformed input."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from pamqp import commands as spec

import hutch
from hutch.amqp import connect, connect_robust
from tests.support.fake_amqp import (
    FakeBroker,
    FakeConnection,
    content_frames,
    handshake_and_serve,
    method_frame,
    raw_frame,
    serve,
)
from tests.support.logwatch import LogWatch

SECRET = "pa55-w0rd-s3cret"


async def forever() -> None:
    await asyncio.Event().wait()


# -- handshake ------------------------------------------------------------------------------


async def test_handshake_sends_plain_credentials_properties_and_negotiated_limits() -> None:
    """The client authenticates with PLAIN, names itself, and takes the smaller of each limit."""

    async with FakeBroker(
        handshake_and_serve(heartbeat=10, frame_max=65536, channel_max=100)
    ) as broker:
        url = broker.url("name=billing&heartbeat=5&frame_max=131072&channel_max=2047")
        async with await connect(url) as connection:
            conn = broker.connections[0]
            assert conn.start_ok is not None
            assert conn.tune_ok is not None
            assert conn.open is not None
            assert conn.start_ok.mechanism == "PLAIN"
            assert conn.start_ok.response == "\0guest\0guest"
            props = conn.start_ok.client_properties
            assert props["product"] == "hutch"
            assert props["connection_name"] == "billing"
            capabilities = props["capabilities"]
            for name in ("connection.blocked", "publisher_confirms", "consumer_cancel_notify"):
                assert capabilities[name] is True
            assert (conn.tune_ok.heartbeat, conn.tune_ok.frame_max) == (5, 65536)
            assert conn.tune_ok.channel_max == 100
            assert conn.open.virtual_host == "/"
            assert connection.heartbeat == 5
            assert connection.state is hutch.ConnectionState.CONNECTED


async def test_client_properties_argument_sets_connection_name() -> None:
    """``client_properties={"connection_name": ...}`` (as the seed passes it) reaches the broker."""

    async with FakeBroker(handshake_and_serve()) as broker:
        props = {"connection_name": "caller", "team": "payments"}
        async with await connect(broker.url(), client_properties=props):
            start_ok = broker.connections[0].start_ok
            assert start_ok is not None
            assert start_ok.client_properties["connection_name"] == "caller"
            assert start_ok.client_properties["team"] == "payments"


async def test_heartbeat_zero_in_url_turns_heartbeats_off() -> None:
    """``?heartbeat=0`` answers tune with heartbeat 0 whatever the broker proposed."""

    async with (
        FakeBroker(handshake_and_serve(heartbeat=60)) as broker,
        await connect(broker.url("heartbeat=0")) as conn,
    ):
        tune_ok = broker.connections[0].tune_ok
        assert tune_ok is not None
        assert tune_ok.heartbeat == 0
        assert conn.heartbeat == 0


async def test_broker_without_plain_auth_is_refused_clearly() -> None:
    """A broker that offers no PLAIN mechanism gives a ConnectError saying so."""

    async def script(conn: FakeConnection) -> None:
        await conn.handshake(mechanisms="EXTERNAL")

    async with FakeBroker(script) as broker:
        with pytest.raises(hutch.ConnectError, match="PLAIN"):
            await connect(broker.url())


async def test_refused_login_raises_authentication_error_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 403 during the handshake is an AuthenticationError naming the user, never the password."""

    async def script(conn: FakeConnection) -> None:
        await conn.reader.readexactly(8)
        conn.send_method(0, spec.Connection.Start(mechanisms="PLAIN", locales="en_US"))
        await conn.expect(spec.Connection.StartOk)
        conn.send_method(
            0,
            spec.Connection.Close(
                reply_code=403,
                reply_text="ACCESS_REFUSED - Login was refused",
                class_id=0,
                method_id=0,
            ),
        )
        await conn.expect(spec.Connection.CloseOk)

    caplog.set_level(logging.DEBUG)
    async with FakeBroker(script) as broker:
        with pytest.raises(hutch.AuthenticationError, match="refused the login") as caught:
            await connect(broker.url(password=SECRET))
        assert "'guest'" in str(caught.value)
        assert SECRET not in str(caught.value)
        assert SECRET not in caplog.text


async def test_refused_vhost_raises_virtual_host_error_in_words() -> None:
    """A 530 in answer to connection.open is a VirtualHostError naming the vhost."""

    async def script(conn: FakeConnection) -> None:
        await conn.reader.readexactly(8)
        conn.send_method(0, spec.Connection.Start(mechanisms="PLAIN", locales="en_US"))
        await conn.expect(spec.Connection.StartOk)
        conn.send_method(0, spec.Connection.Tune(channel_max=0, frame_max=131072, heartbeat=0))
        await conn.expect(spec.Connection.TuneOk)
        await conn.expect(spec.Connection.Open)
        conn.send_method(
            0,
            spec.Connection.Close(
                reply_code=530,
                reply_text="NOT_ALLOWED - vhost nope not found",
                class_id=0,
                method_id=0,
            ),
        )
        await conn.expect(spec.Connection.CloseOk)

    async with FakeBroker(script) as broker:
        with pytest.raises(hutch.VirtualHostError, match="virtual host 'nope'") as caught:
            await connect(broker.url(vhost="nope"))
        assert "530" in str(caught.value)


async def test_silent_server_gives_connect_timeout_in_time() -> None:
    """A server that accepts but never answers gives ConnectTimeout after connection_timeout."""
    async with FakeBroker(lambda conn: forever()) as broker:
        started = time.monotonic()
        with pytest.raises(hutch.ConnectTimeout, match=r"within 0\.5 s"):
            await connect(broker.url("connection_timeout=0.5"))
        assert time.monotonic() - started < 3


async def test_nothing_listening_gives_connect_error_without_password() -> None:
    """A closed port gives a ConnectError that says to check the broker, password masked."""
    async with FakeBroker(lambda conn: forever()) as broker:
        url = broker.url(password=SECRET)
    with pytest.raises(hutch.ConnectError, match="is RabbitMQ running") as caught:
        await connect(url)
    assert SECRET not in str(caught.value)
    assert isinstance(caught.value, ConnectionError)


async def test_server_speaking_another_protocol_version_is_a_protocol_error() -> None:
    """A server that answers with a protocol header (no 0-9-1) gives a clear ProtocolError."""

    async def script(conn: FakeConnection) -> None:
        await conn.reader.readexactly(8)
        conn.send(b"AMQP\x00\x01\x00\x00")
        await conn.wait_closed()

    async with FakeBroker(script) as broker:
        with pytest.raises(hutch.ProtocolError, match="does not speak AMQP 0-9-1"):
            await connect(broker.url())


async def test_repr_of_connection_masks_the_password() -> None:
    """repr(connection) and connection.url show the broker but not the password."""

    async with (
        FakeBroker(handshake_and_serve()) as broker,
        await connect(broker.url(password=SECRET)) as conn,
    ):
        assert SECRET not in repr(conn)
        assert SECRET not in conn.url
        assert f":{broker.port}/" in conn.url


# -- heartbeats -----------------------------------------------------------------------------


async def test_client_sends_heartbeats_when_idle() -> None:
    """With heartbeat 1 s an idle client sends heartbeat frames on its own."""

    async with (
        FakeBroker(handshake_and_serve(heartbeat=1)) as broker,
        await connect(broker.url("heartbeat=1")),
    ):
        conn = broker.connections[0]
        await asyncio.wait_for(conn.heartbeat_event.wait(), 3)
        assert conn.heartbeats >= 1


async def test_silent_peer_is_declared_dead_within_two_intervals() -> None:
    """A broker that goes silent is detected within 2 heartbeat intervals: waiters get
    ConnectionLost and the close callback runs."""

    async def script(conn: FakeConnection) -> None:
        await conn.handshake(heartbeat=2)
        await conn.open_channel()
        await conn.expect(spec.Queue.Declare)
        await conn.wait_closed(timeout=30)  # read, never answer, never send a heartbeat

    async with FakeBroker(script) as broker:
        connection = await connect(broker.url("heartbeat=2"))
        closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        connection.add_close_callback(lambda _conn, error: closed.set_result(error))
        channel = await connection.channel()
        silent_since = time.monotonic()
        with pytest.raises(hutch.ConnectionLost, match="heartbeat 2 s"):
            await channel.queue_declare("q")
        took = time.monotonic() - silent_since
        # 2 intervals, plus room for a late event loop on a busy machine.
        assert took <= 2 * 2 + 0.5, took
        assert took >= 2, took
        assert isinstance(await asyncio.wait_for(closed, 5), hutch.ConnectionLost)
        assert connection.is_closed
        await connection.close()


async def test_peer_sending_only_heartbeats_is_not_declared_dead() -> None:
    """A broker that says nothing but heartbeats keeps the connection open past 2 intervals."""
    sent = asyncio.Event()

    async def script(conn: FakeConnection) -> None:
        await conn.handshake(heartbeat=1)
        for _ in range(6):  # 3 s of heartbeats every 0.5 s: three intervals
            await asyncio.sleep(0.5)
            conn.send(raw_frame(8, 0, b""))
        sent.set()
        await serve(conn)

    async with FakeBroker(script) as broker, await connect(broker.url("heartbeat=1")) as conn:
        await asyncio.wait_for(sent.wait(), 10)
        assert conn.state is hutch.ConnectionState.CONNECTED
        channel = await conn.channel()
        await channel.queue_declare("still-alive")


# -- blocking -------------------------------------------------------------------------------


async def test_publish_waits_while_the_broker_blocks_the_connection() -> None:
    """After connection.blocked no publish is written until connection.unblocked."""
    checked = asyncio.Event()

    async def script(conn: FakeConnection) -> None:
        await conn.handshake()
        await conn.open_channel()
        conn.send_method(0, spec.Connection.Blocked(reason="low on memory"))
        with pytest.raises(TimeoutError):
            await conn.read_frame(timeout=0.5)  # nothing may arrive while blocked
        checked.set()
        conn.send_method(0, spec.Connection.Unblocked())
        _, _, body = await conn.read_publish()
        assert body == b"after"
        conn.send_method(1, spec.Basic.Ack(delivery_tag=1))
        await serve(conn)

    async with (
        FakeBroker(script) as broker,
        await connect(broker.url()) as connection,
        LogWatch("blocked publishing") as blocked_seen,
    ):
        channel = await connection.channel()
        await blocked_seen.wait()
        with pytest.raises(hutch.HutchTimeoutError, match="blocked this connection"):
            await channel.publish(b"never", "q", timeout=0.2)
        await asyncio.wait_for(checked.wait(), 5)
        await asyncio.wait_for(channel.publish(b"after", "q"), 5)


async def test_publish_timeout_bounds_the_whole_call_not_each_wait() -> None:
    """``publish(timeout=T)`` gives up T seconds after it was called, even when part of T went
    on waiting for the broker to unblock the connection."""

    async def script(conn: FakeConnection) -> None:
        await conn.handshake()
        await conn.open_channel()
        conn.send_method(0, spec.Connection.Blocked(reason="low on memory"))
        await asyncio.sleep(1.0)  # a broker that stays blocked for a while
        conn.send_method(0, spec.Connection.Unblocked())
        await conn.read_publish()  # ... and then never confirms
        await serve(conn)

    async with FakeBroker(script) as broker, await connect(broker.url()) as connection:
        channel = await connection.channel()
        started = time.monotonic()
        with pytest.raises(hutch.HutchTimeoutError, match="did not confirm"):
            await channel.publish(b"late", "q", timeout=1.5)
        # Per-wait bounds would give up only after 1.0 s + 1.5 s.
        assert time.monotonic() - started < 2.2


# -- closing --------------------------------------------------------------------------------


async def test_close_sends_the_reason_and_runs_close_callbacks() -> None:
    """close(reason) sends connection.close 200 with the reason; the callback gets None."""
    got: list[spec.Connection.Close] = []

    async def hook(conn: FakeConnection, channel: int, method: object) -> bool:
        if isinstance(method, spec.Connection.Close):
            got.append(method)
        return False

    async with FakeBroker(handshake_and_serve(hook)) as broker:
        connection = await connect(broker.url())
        errors: list[BaseException | None] = []
        connection.add_close_callback(lambda _c, error: errors.append(error))
        channel = await connection.channel()
        await connection.close("shutting down for maintenance")
        assert [(m.reply_code, m.reply_text) for m in got] == [
            (200, "shutting down for maintenance")
        ]
        assert connection.is_closed
        assert channel.is_closed
        assert errors == [None]
        with pytest.raises(hutch.ConnectionClosed):
            await connection.channel()
        with pytest.raises(hutch.ConnectionClosed):
            await channel.queue_declare("q")
        await connection.close()  # idempotent


async def test_async_with_closes_the_connection() -> None:
    """Leaving ``async with connection`` closes it."""
    async with FakeBroker(handshake_and_serve()) as broker:
        async with await connect(broker.url()) as connection:
            assert connection.is_connected
        assert connection.is_closed


async def test_broker_closing_the_connection_fails_waiters_with_its_code() -> None:
    """connection.close from the broker is answered, and waiters get ConnectionLost with the
    broker's reply code and text."""

    async def script(conn: FakeConnection) -> None:
        await conn.handshake()
        await conn.open_channel()
        await conn.expect(spec.Queue.Declare)
        conn.send_method(
            0,
            spec.Connection.Close(
                reply_code=320, reply_text="CONNECTION_FORCED - bye", class_id=0, method_id=0
            ),
        )
        await conn.expect(spec.Connection.CloseOk)

    async with FakeBroker(script) as broker:
        connection = await connect(broker.url())
        channel = await connection.channel()
        with pytest.raises(hutch.ConnectionLost, match="320 CONNECTION_FORCED") as caught:
            await channel.queue_declare("q")
        assert caught.value.reply_code == 320
        assert connection.is_closed
        await connection.close()


async def test_lost_connection_fails_every_waiter() -> None:
    """A publish awaiting its confirm, a declare and a get all raise ConnectionLost (a
    ConnectionError) when the socket drops; nothing waits forever."""
    seen = asyncio.Event()

    async def script(conn: FakeConnection) -> None:
        await conn.handshake()
        await conn.open_channel()
        await conn.open_channel()
        await conn.read_publish()
        await conn.expect(spec.Queue.Declare)
        await conn.expect(spec.Basic.Get)
        seen.set()
        conn.hang_up()

    async with FakeBroker(script) as broker:
        connection = await connect(broker.url())
        publisher = await connection.channel()
        other = await connection.channel()
        publish = asyncio.ensure_future(publisher.publish(b"x", "q"))
        await asyncio.sleep(0)
        declare = asyncio.ensure_future(other.queue_declare("q"))
        await asyncio.sleep(0)
        get = asyncio.ensure_future(other.get("q"))
        await asyncio.wait_for(seen.wait(), 5)
        done, pending = await asyncio.wait([publish, declare, get], timeout=5)
        assert not pending
        for task in done:
            assert isinstance(task.exception(), hutch.ConnectionLost)
            assert isinstance(task.exception(), ConnectionError)
        assert connection.is_closed
        assert publisher.is_closed
        assert other.is_closed
        await connection.close()


async def test_close_from_a_consumer_callback_does_not_deadlock() -> None:
    """A consumer callback may close the connection; close returns and the callback finishes."""
    finished = asyncio.Event()

    async def hook(conn: FakeConnection, channel: int, method: object) -> bool:
        if isinstance(method, spec.Basic.Consume):
            conn.send_method(channel, spec.Basic.ConsumeOk(consumer_tag=method.consumer_tag))
            conn.send_method(
                channel,
                spec.Basic.Deliver(
                    consumer_tag=method.consumer_tag, delivery_tag=1, routing_key="q"
                ),
            )
            conn.send(content_frames(channel, b"stop"))
            return True
        return False

    async with FakeBroker(handshake_and_serve(hook)) as broker:
        connection = await connect(broker.url())
        channel = await connection.channel()

        async def on_message(message: hutch.IncomingMessage) -> None:
            await message.ack()
            await connection.close()
            finished.set()

        await channel.consume("q", on_message)
        await asyncio.wait_for(finished.wait(), 5)
        assert connection.is_closed


# -- malformed input ------------------------------------------------------------------------


MALFORMED = {
    "truncated frame then close": (
        method_frame(1, spec.Queue.DeclareOk(queue="q", message_count=0, consumer_count=0))[:9],
        "in the middle of a frame",
    ),
    "wrong frame end byte": (
        raw_frame(
            1,
            1,
            method_frame(1, spec.Queue.DeclareOk(queue="q", message_count=0, consumer_count=0))[
                7:-1
            ],
            end=0xAB,
        ),
        "does not end with 0xCE",
    ),
    "oversize frame": (
        raw_frame(3, 1, b"x" * 5000),
        "frame of 5000 bytes",
    ),
    "unknown method id": (
        raw_frame(1, 1, b"\x00\x99\x00\x99"),
        "unknown AMQP method",
    ),
    "unknown method on channel 0": (
        raw_frame(1, 0, b"\x00\x0a\x00\x63"),
        "unknown AMQP method",
    ),
    "method frame too short": (
        raw_frame(1, 1, b"\x00\x32"),
        "too short",
    ),
    "unknown frame type": (
        raw_frame(7, 1, b"abc"),
        "unknown type 7",
    ),
    "body longer than announced": (
        method_frame(1, spec.Basic.Deliver(consumer_tag="c", delivery_tag=1, routing_key="q"))
        + content_frames(1, b"abc")[: -(3 + 8)]
        + raw_frame(3, 1, b"abcdef"),
        "longer message body",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_input_closes_the_connection_with_a_protocol_error(case: str) -> None:
    """Bytes that are not valid AMQP close the connection; waiters and the close callback get
    a ProtocolError saying what was wrong."""
    data, words = MALFORMED[case]

    async def hook(conn: FakeConnection, channel: int, method: object) -> bool:
        if isinstance(method, spec.Queue.Declare):
            conn.send(data)
            if case == "truncated frame then close":
                await conn.writer.drain()
                conn.writer.close()
            return True
        return False

    async with FakeBroker(handshake_and_serve(hook, frame_max=4096)) as broker:
        connection = await connect(broker.url())
        closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        connection.add_close_callback(lambda _conn, error: closed.set_result(error))
        channel = await connection.channel()
        await channel.consume("q", lambda message: None, consumer_tag="c")
        with pytest.raises(hutch.ProtocolError, match=words):
            await asyncio.wait_for(channel.queue_declare("q"), 5)
        assert isinstance(await asyncio.wait_for(closed, 5), hutch.ProtocolError)
        assert connection.is_closed
        await connection.close()


async def test_robust_connection_reconnects_after_malformed_input() -> None:
    """A robust connection treats a protocol error as a lost connection and reconnects."""

    async def hook(conn: FakeConnection, channel: int, method: object) -> bool:
        if isinstance(method, spec.Queue.Declare) and method.queue == "bad":
            conn.send(raw_frame(9, 1, b""))
            return True
        return False

    async with (
        FakeBroker(handshake_and_serve(hook)) as broker,
        await connect_robust(broker.url(), reconnect_delay=0.01) as connection,
    ):
        channel = await connection.channel()
        with pytest.raises(hutch.ProtocolError):
            await channel.queue_declare("bad")
        info = await asyncio.wait_for(channel.queue_declare("good"), 5)
        assert info.queue == "good"
        assert len(broker.connections) == 2


# -- cancelled midway -----------------------------------------------------------------------


async def test_consume_cancelled_before_its_consume_ok_leaves_no_consumer_behind() -> None:
    """A consume() cancelled while its consume-ok is on the way still gets a consumer on the
    broker: hutch cancels it there, and what it delivered meanwhile reaches the callback (with
    no_ack the broker already forgot it) instead of being nacked as an unknown consumer's."""
    consume_seen = asyncio.Event()
    cancelled = asyncio.Event()
    after: list[object] = []

    async def script(conn: FakeConnection) -> None:
        await conn.handshake()
        await conn.open_channel()
        _, consume = await conn.expect(spec.Basic.Consume)
        consume_seen.set()
        await asyncio.wait_for(cancelled.wait(), 5)
        tag = consume.consumer_tag
        conn.send_method(1, spec.Basic.ConsumeOk(consumer_tag=tag))
        conn.send_method(1, spec.Basic.Deliver(consumer_tag=tag, delivery_tag=1, routing_key="q"))
        conn.send(content_frames(1, b"meanwhile"))
        _, method = await conn.read_method()
        after.append(method)
        if isinstance(method, spec.Basic.Cancel):
            conn.send_method(1, spec.Basic.CancelOk(consumer_tag=tag))
        await serve(conn)

    async with FakeBroker(script) as broker, await connect(broker.url()) as connection:
        channel = await connection.channel()
        got = asyncio.Event()
        bodies: list[bytes] = []

        def on_message(message: hutch.IncomingMessage) -> None:
            bodies.append(message.body)
            got.set()

        consume = asyncio.ensure_future(channel.consume("q", on_message, no_ack=True))
        await asyncio.wait_for(consume_seen.wait(), 5)
        consume.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consume
        cancelled.set()
        await asyncio.wait_for(got.wait(), 5)
        assert bodies == [b"meanwhile"]
        await asyncio.wait_for(channel.queue_declare("sync"), 5)
        assert [type(m).__name__ for m in after] == ["Cancel"]
        assert not [m for _, m in broker.connections[0].methods if isinstance(m, spec.Basic.Nack)]


async def test_cancel_cancelled_before_its_cancel_ok_keeps_the_consumer_until_then() -> None:
    """A cancel() that is itself cancelled while the broker's cancel-ok is on the way still
    hands the deliveries sent before it to the callback; a no_ack delivery is never nacked
    (the broker would close the channel for an unknown delivery tag, and it would be lost)."""
    cancel_seen = asyncio.Event()
    cancelled = asyncio.Event()

    async def hook(conn: FakeConnection, channel: int, method: object) -> bool:
        if isinstance(method, spec.Basic.Cancel):
            cancel_seen.set()
            await asyncio.wait_for(cancelled.wait(), 5)
            tag = method.consumer_tag
            conn.send_method(
                channel, spec.Basic.Deliver(consumer_tag=tag, delivery_tag=1, routing_key="q")
            )
            conn.send(content_frames(channel, b"before cancel-ok"))
            conn.send_method(channel, spec.Basic.CancelOk(consumer_tag=tag))
            return True
        return False

    async with (
        FakeBroker(handshake_and_serve(hook)) as broker,
        await connect(broker.url()) as connection,
    ):
        channel = await connection.channel()
        got = asyncio.Event()
        bodies: list[bytes] = []

        def on_message(message: hutch.IncomingMessage) -> None:
            bodies.append(message.body)
            got.set()

        tag = await channel.consume("q", on_message, no_ack=True)
        cancel = asyncio.ensure_future(channel.cancel(tag))
        await asyncio.wait_for(cancel_seen.wait(), 5)
        cancel.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancel
        cancelled.set()
        await asyncio.wait_for(got.wait(), 5)
        assert bodies == [b"before cancel-ok"]
        await asyncio.wait_for(channel.queue_declare("sync"), 5)
        assert channel.state is hutch.ChannelState.OPEN
        assert not [m for _, m in broker.connections[0].methods if isinstance(m, spec.Basic.Nack)]


async def test_get_cancelled_before_its_answer_hands_the_message_back() -> None:
    """A get() cancelled while the broker's get-ok is on the way nacks (requeues) the message
    it fetched, instead of leaving it unacked on the channel until the channel closes."""
    get_seen = asyncio.Event()
    cancelled = asyncio.Event()
    answered = asyncio.Event()
    after: list[object] = []

    async def script(conn: FakeConnection) -> None:
        await conn.handshake()
        await conn.open_channel()
        await conn.expect(spec.Basic.Get)
        get_seen.set()
        await asyncio.wait_for(cancelled.wait(), 5)
        conn.send_method(
            1, spec.Basic.GetOk(delivery_tag=1, exchange="", routing_key="q", message_count=0)
        )
        conn.send(content_frames(1, b"fetched"))
        _, method = await conn.read_method()
        after.append(method)
        answered.set()
        await serve(conn)

    async with FakeBroker(script) as broker, await connect(broker.url()) as connection:
        channel = await connection.channel()
        get = asyncio.ensure_future(channel.get("q"))
        await asyncio.wait_for(get_seen.wait(), 5)
        get.cancel()
        with pytest.raises(asyncio.CancelledError):
            await get
        cancelled.set()
        await asyncio.wait_for(answered.wait(), 5)
        [nack] = after
        assert isinstance(nack, spec.Basic.Nack)
        assert (nack.delivery_tag, nack.requeue) == (1, True)


async def test_publish_held_by_a_full_socket_does_not_write_on_a_channel_closed_meanwhile() -> None:
    """A publish that waited for the socket to drain, while the broker closed its channel,
    raises the channel's error instead of writing on the closed channel (which the broker
    answers by closing the connection, leaving that publish's confirm waiting forever)."""
    paused = asyncio.Event()
    closed = asyncio.Event()

    async def script(conn: FakeConnection) -> None:
        await conn.handshake()
        await conn.open_channel()
        await asyncio.wait_for(paused.wait(), 5)
        conn.send_method(
            1,
            spec.Channel.Close(
                reply_code=404, reply_text="NOT_FOUND - no exchange 'x'", class_id=60, method_id=40
            ),
        )
        await conn.expect(spec.Channel.CloseOk)
        closed.set()
        await serve(conn)

    async with FakeBroker(script) as broker, await connect(broker.url()) as connection:
        channel = await connection.channel()
        link = channel._link
        assert link is not None
        link.pause_writing()  # as the transport does when the socket buffer is full
        publish = asyncio.ensure_future(channel.publish(b"late", "q"))
        paused.set()
        await asyncio.wait_for(closed.wait(), 5)
        assert channel.is_closed
        assert not publish.done()
        link.resume_writing()
        with pytest.raises(hutch.NotFound):
            await asyncio.wait_for(publish, 5)
        await asyncio.wait_for((await connection.channel()).queue_declare("sync"), 5)
        methods = broker.connections[0].methods
        assert not [m for _, m in methods if isinstance(m, spec.Basic.Publish)]


async def test_a_second_close_waits_for_the_first_to_finish() -> None:
    """Two concurrent ``channel.close()`` calls both return only once the channel is closed."""

    async def hook(conn: FakeConnection, channel: int, method: object) -> bool:
        if isinstance(method, spec.Channel.Close):
            await asyncio.sleep(0.3)  # a slow broker
            conn.send_method(channel, spec.Channel.CloseOk())
            return True
        return False

    closed: list[object] = []
    async with (
        FakeBroker(handshake_and_serve(hook)) as broker,
        await connect(broker.url()) as connection,
    ):
        channel = await connection.channel()
        channel.add_close_listener(lambda ch, error: closed.append(error))
        first = asyncio.ensure_future(channel.close())
        await asyncio.sleep(0)  # let the first close send channel.close
        await channel.close()
        assert closed == [None]
        assert channel.is_closed
        await first
