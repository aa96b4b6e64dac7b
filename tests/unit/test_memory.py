"""The embedded broker's own API: naming, test helpers (join, messages, errors, reset) and its
life across event loops. Broker semantics shared with RabbitMQ are in tests/contract."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator

import pytest

import hutch
from hutch.memory import MemoryBroker, MemoryConnection, connect_memory, get_broker
from hutch.memory.broker import parse_name, topic_matches


@pytest.fixture
def broker_name() -> Iterator[str]:
    """A broker name unique to the test; the broker is reset afterwards."""
    name = f"unit-{uuid.uuid4().hex}"
    yield name
    get_broker(name).reset()


class Boom(Exception):
    """Raised by the consumer callbacks of these tests."""


# -- naming and connecting -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memory://", "default"),
        ("memory:///", "default"),
        ("memory://tests", "tests"),
        ("memory://tests/", "tests"),
        ("memory://tests?name=x", "tests"),
    ],
)
def test_the_broker_name_comes_from_the_url(url: str, expected: str) -> None:
    """``memory://`` is the default broker; ``memory://NAME`` names one."""
    assert parse_name(url) == expected


async def test_a_name_is_one_broker_and_names_are_isolated(broker_name: str) -> None:
    """Connections to the same name share queues; another name does not see them."""
    async with await hutch.connect(f"memory://{broker_name}") as first:
        channel = await first.channel()
        await channel.queue_declare("shared")
        await channel.publish(b"x", "shared")
        async with await hutch.connect(f"memory://{broker_name}") as second:
            other = await second.channel()
            assert (await other.queue_declare("shared", passive=True)).message_count == 1
        async with await hutch.connect(f"memory://{broker_name}-other") as third:
            isolated = await third.channel()
            with pytest.raises(hutch.NotFound):
                await isolated.queue_declare("shared", passive=True)
    assert get_broker(broker_name) is get_broker(f"memory://{broker_name}")
    get_broker(f"{broker_name}-other").reset()


async def test_connect_dispatches_memory_urls_and_keeps_amqp_options(broker_name: str) -> None:
    """``hutch.connect``/``connect_robust`` give memory connections and accept the AMQP
    options (ignored), so a program switches transports by URL alone."""
    plain = await hutch.connect(f"memory://{broker_name}", heartbeat=5, name="x")
    robust = await hutch.connect_robust(
        f"memory://{broker_name}", client_properties={"connection_name": "c"}, reconnect_delay=1
    )
    assert isinstance(plain, MemoryConnection)
    assert isinstance(robust, MemoryConnection)
    assert (plain.robust, robust.robust) == (False, True)
    assert plain.url == f"memory://{broker_name}"
    assert plain.state is hutch.ConnectionState.CONNECTED
    await plain.close()
    await robust.close()
    assert plain.is_closed


async def test_unknown_connect_options_raise_type_error() -> None:
    """A misspelt option is a TypeError naming it, as with ``hutch.amqp.connect``."""
    with pytest.raises(TypeError, match="hearbeat"):
        await hutch.connect("memory://", hearbeat=5)
    with pytest.raises(TypeError, match="connect_robust"):
        await connect_memory("memory://", robust=True, colour="red")


async def test_robust_connections_name_queues_so_they_survive_reconnects(
    broker_name: str,
) -> None:
    """On a robust connection a server-named queue is named ``hutch.gen-...``, as by the robust
    AMQP client."""
    async with await hutch.connect_robust(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        info = await channel.queue_declare("", exclusive=True)
        assert info.queue.startswith("hutch.gen-")


async def test_callbacks_are_kept_and_close_callbacks_run(broker_name: str) -> None:
    """Reconnect and disconnect callbacks are accepted (never called: nothing disconnects);
    close callbacks, plain or async, run on close."""
    connection = await hutch.connect_robust(f"memory://{broker_name}")
    calls: list[str] = []

    async def on_close(conn: object, error: BaseException | None) -> None:
        calls.append(f"async close {error}")

    connection.add_reconnect_callback(lambda conn: calls.append("reconnect"))
    connection.add_disconnect_callback(lambda conn, error: calls.append("disconnect"))
    connection.add_close_callback(lambda conn, error: calls.append(f"close {error}"))
    connection.add_close_callback(on_close)
    await connection.close()
    assert calls == ["close None", "async close None"]


# -- join, messages, errors ----------------------------------------------------------------


async def test_join_waits_until_the_queue_is_drained_and_its_handlers_are_done(
    broker_name: str,
) -> None:
    """``join`` returns only once every message was delivered, acked, and its async callback
    finished."""
    broker = get_broker(broker_name)
    finished: list[bytes] = []
    gate = asyncio.Event()
    async with await hutch.connect(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        await channel.queue_declare("jobs")

        async def handler(message: hutch.IncomingMessage) -> None:
            await gate.wait()
            await message.ack()
            await asyncio.sleep(0)  # still running after the ack
            finished.append(message.body)

        await channel.consume("jobs", handler)
        for body in (b"1", b"2", b"3"):
            await channel.publish(body, "jobs")
        joining = asyncio.ensure_future(broker.join("jobs", timeout=5))
        await asyncio.sleep(0)
        assert not joining.done()
        gate.set()
        await joining
        assert sorted(finished) == [b"1", b"2", b"3"]


async def test_join_returns_at_once_for_an_idle_queue(broker_name: str) -> None:
    """``join`` of an empty queue with nothing in flight returns without waiting."""
    async with await hutch.connect(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        await channel.queue_declare("idle")
        await asyncio.wait_for(get_broker(broker_name).join("idle"), 1)


async def test_join_times_out_with_a_message_that_says_what_is_left(broker_name: str) -> None:
    """A queue nobody drains makes ``join`` raise a TimeoutError naming the counts."""
    async with await hutch.connect(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        await channel.queue_declare("stuck")
        await channel.publish(b"x", "stuck")
        with pytest.raises(hutch.HutchTimeoutError, match="1 ready, 0 unacked") as caught:
            await get_broker(broker_name).join("stuck", timeout=0.05)
        assert isinstance(caught.value, TimeoutError)


async def test_join_of_an_unknown_queue_is_a_value_error(broker_name: str) -> None:
    """``join`` of a queue that does not exist says so, and which queues do."""
    with pytest.raises(ValueError, match="no queue 'nope'"):
        await get_broker(broker_name).join("nope")


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_exception_escaping_a_callback_is_recorded_logged_and_raised_by_join(
    broker_name: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception that escapes a consumer callback (plain or async) is kept in
    ``broker.errors``, logged, and raised by ``join`` of its queue (not of another one)."""
    broker = get_broker(broker_name)

    def sync_handler(message: hutch.IncomingMessage) -> None:
        raise Boom(message.body.decode())

    async def async_handler(message: hutch.IncomingMessage) -> None:
        await message.ack()
        raise Boom(message.body.decode())

    async with await hutch.connect(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        await channel.queue_declare("failing")
        await channel.queue_declare("fine")
        handler = sync_handler if kind == "sync" else async_handler
        await channel.consume("failing", handler)
        with caplog.at_level(logging.ERROR, logger="hutch"):
            await channel.publish(b"broken", "failing")
            with pytest.raises(Boom, match="broken"):
                await broker.join("failing", timeout=5)
        assert [str(e) for e in broker.errors] == ["broken"]
        assert "consumer callback for queue 'failing' raised" in caplog.text
        await broker.join("fine", timeout=1)


async def test_join_without_fail_fast_waits_for_idle_despite_errors(broker_name: str) -> None:
    """With ``fail_fast=False`` join ignores recorded errors and waits for the queue."""
    broker = get_broker(broker_name)
    async with await hutch.connect(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        await channel.queue_declare("q")

        async def handler(message: hutch.IncomingMessage) -> None:
            await message.ack()
            raise Boom("ignored")

        await channel.consume("q", handler)
        await channel.publish(b"x", "q")
        await broker.join("q", fail_fast=False, timeout=5)
        assert len(broker.errors) == 1


async def test_messages_lists_what_waits_without_consuming_it(broker_name: str) -> None:
    """``messages`` returns copies of the ready messages in delivery order; changing a copy
    changes nothing in the queue."""
    broker = get_broker(broker_name)
    async with await hutch.connect(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        await channel.queue_declare("q", arguments={"x-max-priority": 2})
        await channel.publish(hutch.Message(b"low", headers={"k": [1]}), "q")
        await channel.publish(hutch.Message(b"high", priority=2, correlation_id="c"), "q")
        listed = broker.messages("q")
        assert [(m.body, m.priority) for m in listed] == [(b"high", 2), (b"low", None)]
        assert listed[0].correlation_id == "c"
        assert listed[1].headers == {"k": [1]}
        assert listed[1].headers is not None
        listed[1].headers["k"].append(2)
        assert broker.messages("q")[1].headers == {"k": [1]}
        assert (await channel.queue_declare("q", passive=True)).message_count == 2
    assert "q" in broker.queues
    with pytest.raises(ValueError, match="no queue 'other'"):
        broker.messages("other")


async def test_reset_forgets_everything_and_drops_connections(broker_name: str) -> None:
    """``reset`` empties the broker (queues, exchanges, errors) and closes its connections."""
    broker = get_broker(broker_name)
    connection = await hutch.connect(f"memory://{broker_name}")
    channel = await connection.channel()
    await channel.exchange_declare("x", "fanout")
    await channel.queue_declare("q")
    broker.errors.append(Boom("old"))
    broker.reset()
    assert broker.queues == []
    assert broker.errors == []
    assert connection.is_closed
    assert channel.is_closed
    with pytest.raises(hutch.ConnectionClosed, match="reset"):
        await channel.publish(b"x", "q")
    async with await hutch.connect(f"memory://{broker_name}") as fresh:
        check = await fresh.channel()
        with pytest.raises(hutch.NotFound):
            await check.exchange_declare("x", passive=True)
        check = await fresh.channel()
        await check.exchange_declare("amq.topic", passive=True)  # system exchanges stay


# -- across event loops ----------------------------------------------------------------------


def test_a_broker_outlives_its_event_loops() -> None:
    """A broker made in one event loop works in the next (pytest runs each test in a fresh
    loop): a consumer left behind by the ended loop is dropped and its unacked message goes to
    the new consumer; a TTL set in the old loop still expires in the new one."""
    name = f"loops-{uuid.uuid4().hex}"
    broker: MemoryBroker = get_broker(name)
    leftovers: list[MemoryConnection] = []

    async def first() -> None:
        connection = await connect_memory(f"memory://{name}")
        leftovers.append(connection)
        channel = await connection.channel()
        await channel.queue_declare("q")
        await channel.queue_declare("dead")
        await channel.queue_declare(
            "ttl",
            arguments={
                "x-message-ttl": 30,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": "dead",
            },
        )
        got = asyncio.Event()
        await channel.consume("q", lambda message: got.set())
        await channel.publish(b"held", "q")
        await channel.publish(b"expiring", "ttl")
        await asyncio.wait_for(got.wait(), 5)  # delivered, never acked; connection left open

    async def second() -> list[tuple[bytes, bool]]:
        async with await hutch.connect(f"memory://{name}") as connection:
            channel = await connection.channel()
            received: asyncio.Queue[hutch.IncomingMessage] = asyncio.Queue()
            await channel.consume("q", received.put_nowait, no_ack=True)
            await channel.consume("dead", received.put_nowait, no_ack=True)
            await channel.publish(b"new", "q")
            got = [await asyncio.wait_for(received.get(), 5) for _ in range(3)]
            return sorted((m.body, m.redelivered) for m in got)

    try:
        asyncio.run(first())
        assert sorted(asyncio.run(second())) == [
            (b"expiring", False),
            (b"held", True),
            (b"new", False),
        ]
        assert leftovers[0].is_closed
    finally:
        broker.reset()


# -- robust channels -------------------------------------------------------------------------


async def test_a_settle_from_before_a_robust_channel_error_is_ignored(
    broker_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After a channel error on a robust connection the unacked deliveries are requeued; an
    ack of one of them (from before the error) is ignored with a warning, not misapplied."""
    async with await hutch.connect_robust(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        await channel.queue_declare("q")
        await channel.publish(b"x", "q")
        old = await channel.get("q")
        assert old is not None
        with pytest.raises(hutch.NotFound):
            await channel.queue_purge("missing")
        with caplog.at_level(logging.WARNING, logger="hutch"):
            await old.ack()
        assert "not settling delivery 1" in caplog.text
        again = await channel.get("q")
        assert again is not None
        assert (again.body, again.redelivered, again.delivery_tag) == (b"x", True, 1)
        await again.ack()
        assert await channel.get("q") is None


async def test_closing_a_channel_cancels_its_running_callbacks(broker_name: str) -> None:
    """``close()`` cancels the consumer callbacks still running (as tasks the channel owns)
    and requeues their messages."""
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(message: hutch.IncomingMessage) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with await hutch.connect(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        await channel.queue_declare("q")
        await channel.consume("q", handler)
        await channel.publish(b"x", "q")
        await asyncio.wait_for(started.wait(), 5)
        await channel.close()
        assert cancelled.is_set()
        other = await connection.channel()
        message = await other.get("q")
        assert message is not None
        assert message.redelivered
    assert get_broker(broker_name).errors == []


async def test_many_deliveries_to_async_callbacks_all_arrive(broker_name: str) -> None:
    """Thousands of queued messages reach an async consumer (delivered in batches), each once."""
    count = 3000
    seen: list[int] = []
    async with await hutch.connect(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        await channel.queue_declare("bulk")
        for index in range(count):
            channel.publish_nowait(str(index).encode(), "bulk")

        async def handler(message: hutch.IncomingMessage) -> None:
            seen.append(int(message.body))
            await message.ack()

        await channel.consume("bulk", handler)
        await get_broker(broker_name).join("bulk", timeout=10)
    assert seen == list(range(count))


# -- topic matching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("#", "", True),
        ("*", "", False),
        ("", "", True),
        ("", "a", False),
        ("a.#.#.b", "a.b", True),
        ("#.#", "a.b.c", True),
        ("*.#.*", "a", False),
        ("*.#.*", "a.b", True),
        ("a.*", "a.", True),
        ("a.b", "a.b.c", False),
    ],
)
def test_topic_matching_edge_cases(pattern: str, key: str, expected: bool) -> None:
    """``#`` may match zero words even several times in a row; ``*`` needs exactly one
    (possibly empty) word; an empty key has no words."""
    assert topic_matches(pattern, key) is expected


# -- join and dead-letter feeders; x-expires ---------------------------------------------------


async def test_join_waits_for_messages_that_will_expire_back_into_the_queue(
    broker_name: str,
) -> None:
    """A message waiting in a TTL queue that dead-letters into the joined queue (a retry queue)
    keeps ``join`` waiting until it came back and was handled."""
    broker = get_broker(broker_name)
    handled: list[bytes] = []
    async with await hutch.connect(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        await channel.queue_declare("work")
        await channel.queue_declare(
            "work.retry",
            arguments={
                "x-message-ttl": 20,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": "work",
            },
        )
        await channel.queue_declare("elsewhere", arguments={"x-message-ttl": 60_000})

        async def handler(message: hutch.IncomingMessage) -> None:
            handled.append(message.body)
            await message.ack()

        await channel.consume("work", handler)
        await channel.publish(b"retried", "work.retry")
        await channel.publish(b"unrelated", "elsewhere")  # never reaches "work": not waited on
        await broker.join("work", timeout=5)
        assert handled == [b"retried"]


async def test_join_timeout_names_the_queue_a_message_waits_in(broker_name: str) -> None:
    """When a long retry delay keeps ``join`` waiting, its timeout says where the message is."""
    async with await hutch.connect(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        await channel.queue_declare("work")
        await channel.queue_declare(
            "work.retry",
            arguments={
                "x-message-ttl": 60_000,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": "work",
            },
        )
        await channel.publish(b"later", "work.retry")
        with pytest.raises(
            hutch.HutchTimeoutError, match=r"waiting to expire into it in 'work\.retry'"
        ):
            await get_broker(broker_name).join("work", timeout=0.05)


async def test_x_expires_deletes_a_queue_unused_for_that_long(broker_name: str) -> None:
    """A queue with ``x-expires`` and no consumer is deleted once unused for that long; one
    with a consumer stays."""
    broker = get_broker(broker_name)
    async with await hutch.connect(f"memory://{broker_name}") as connection:
        channel = await connection.channel()
        await channel.queue_declare("temp", arguments={"x-expires": 20})
        await channel.queue_declare("kept", arguments={"x-expires": 20})
        await channel.consume("kept", lambda message: None)
        await channel.queue_declare("observer")
        await channel.queue_declare(
            "marker",
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "observer"},
        )
        arrived: asyncio.Queue[hutch.IncomingMessage] = asyncio.Queue()
        await channel.consume("observer", arrived.put_nowait, no_ack=True)
        # timers of one event loop fire in deadline order: the marker expires after "temp"
        await channel.publish(hutch.Message(b"marker", expiration=0.06), "marker")
        await asyncio.wait_for(arrived.get(), 5)
        assert "temp" not in broker.queues
        assert "kept" in broker.queues


async def test_connect_memory_refuses_other_urls() -> None:
    """``connect_memory`` only takes ``memory://`` URLs."""
    with pytest.raises(ValueError, match="memory://NAME"):
        await connect_memory("amqp://localhost/")
