"""connect_robust against real faults: network cuts, black holes, delays, a frozen broker, a
restarted broker and close_all_connections, while a producer publishes and a consumer acks.

Each fault test proves: the consumer resumes; publishes after recovery are confirmed; every
message whose publish was confirmed is delivered at least once (counted by message id); no call
waits past its bound; after ``close()`` no hutch task is left and no future is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import hutch
from hutch.amqp import Channel, Connection
from tests.support.brokers import Broker
from tests.support.logwatch import LogWatch
from tests.support.proxy import Proxy

HEARTBEAT = 1
BOUND = 5.0  # reconnect_timeout: how long an operation waits for a reconnect
# The longest any single call may take: waiting for a reconnect, plus noticing a dead peer
# (2 heartbeats), plus room for a busy machine.
CALL_BOUND = BOUND + 2 * HEARTBEAT + 3.0
ROBUST = {"reconnect_delay": 0.05, "reconnect_max_delay": 0.5, "reconnect_timeout": BOUND}


def other_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks started since ``before`` that are still running (the proxy's own excepted)."""
    return {
        t
        for t in asyncio.all_tasks() - before
        if t is not asyncio.current_task()
        and not t.done()
        and not t.get_name().startswith("proxy-")
    }


@dataclass
class Traffic:
    """A producer publishing confirmed messages and a consumer acking them, on one robust
    connection; what each saw."""

    connection: Connection
    queue: str
    persistent: bool = False
    confirmed: list[str] = field(default_factory=list)
    received: Counter[str] = field(default_factory=Counter)
    publish_errors: list[BaseException] = field(default_factory=list)
    longest_call: float = 0.0
    reconnects: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _progress: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _publisher: Channel | None = None
    _consumer: Channel | None = None

    @property
    def channels(self) -> list[Channel]:
        return [c for c in (self._consumer, self._publisher) if c is not None]

    async def start(self) -> None:
        self.connection.add_reconnect_callback(self._on_reconnect)
        self._consumer = consumer = await self.connection.channel()
        await consumer.set_qos(20)
        await consumer.queue_declare(self.queue, durable=self.persistent)
        await consumer.consume(self.queue, self._on_message)
        self._publisher = await self.connection.channel()
        self._task = asyncio.ensure_future(self._produce())

    def _on_reconnect(self, _connection: Connection) -> None:
        self.reconnects += 1

    async def _on_message(self, message: hutch.IncomingMessage) -> None:
        assert message.message_id is not None
        self.received[message.message_id] += 1
        await message.ack()
        self._progress.set()

    async def _produce(self) -> None:
        assert self._publisher is not None
        number = 0
        while not self._stop.is_set():
            message_id = f"m{number}"
            message = hutch.Message(
                message_id.encode(),
                message_id=message_id,
                delivery_mode=hutch.DeliveryMode.PERSISTENT if self.persistent else None,
            )
            started = time.monotonic()
            try:
                await self._publisher.publish(message, self.queue)
            except hutch.HutchConnectionError as exc:
                self.publish_errors.append(exc)  # not confirmed: publish it again
            else:
                self.confirmed.append(message_id)
                number += 1
                self._progress.set()
            finally:
                self.longest_call = max(self.longest_call, time.monotonic() - started)
            await asyncio.sleep(0.005)  # ~150 messages/s: enough traffic, little CPU

    async def wait_for(self, what: Callable[[], bool], timeout: float, doing: str) -> None:
        """Wait (bounded) until ``what()`` holds, re-checking on each publish or delivery."""
        deadline = time.monotonic() + timeout
        while not what():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out waiting for {doing}: {len(self.confirmed)} confirmed, "
                    f"{len(self.received)} received, {self.reconnects} reconnects, "
                    f"errors {self.publish_errors[-3:]}"
                )
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)

    async def confirmed_more(self, count: int, timeout: float) -> None:
        target = len(self.confirmed) + count
        await self.wait_for(lambda: len(self.confirmed) >= target, timeout, f"{count} publishes")

    async def finish(self) -> None:
        """Stop publishing, then wait until every confirmed message has been delivered."""
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, CALL_BOUND + 5)
        self._progress.set()
        await self.wait_for(
            lambda: all(self.received[m] for m in self.confirmed), 30, "every confirmed message"
        )


async def run_fault(
    url: str | list[str],
    queue: str,
    fault: Callable[[Traffic], Awaitable[None]],
    *,
    persistent: bool = False,
    expect_reconnect: bool = True,
    **options: Any,
) -> Traffic:
    """Run traffic, inject ``fault`` (which returns once the fault is over), check the proofs."""
    before = set(asyncio.all_tasks())
    connection = await hutch.connect_robust(url, **{**ROBUST, **options})
    traffic = Traffic(connection, queue, persistent=persistent)
    try:
        await traffic.start()
        await traffic.confirmed_more(30, 10)
        await fault(traffic)
        if expect_reconnect:
            await traffic.wait_for(lambda: traffic.reconnects >= 1, 60, "the reconnect")
        await traffic.confirmed_more(30, 30)  # publishes after recovery succeed
        await traffic.finish()
    finally:
        await connection.close()
    assert other_tasks(before) == set(), "hutch left tasks running after close()"
    for channel in traffic.channels:
        assert channel.is_closed
        assert not channel._unconfirmed, "a publish future was left pending"
        assert not channel._waiters, "a call's future was left pending"
    missing = [m for m in traffic.confirmed if not traffic.received[m]]
    assert missing == [], f"confirmed but never delivered: {missing[:10]}"
    assert traffic.longest_call <= CALL_BOUND, traffic.longest_call
    return traffic


async def delete_queue(url: str, queue: str) -> None:
    async with await hutch.connect(url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)


# -- network faults through the proxy (the shared broker keeps running) ---------------------


async def test_cut_connection(amqp_url: str, name: str) -> None:
    """Every connection cut at once: hutch reconnects, restores the consumer, loses nothing."""
    async with Proxy.to(amqp_url) as proxy:

        async def fault(traffic: Traffic) -> None:
            proxy.cut()

        traffic = await run_fault(proxy.url(amqp_url, f"heartbeat={HEARTBEAT}"), name, fault)
        assert traffic.reconnects >= 1
    await delete_queue(amqp_url, name)


async def test_black_hole_is_noticed_by_heartbeats_within_two_intervals(
    amqp_url: str, name: str
) -> None:
    """Traffic silently dropped (no close on either side) is noticed by heartbeats within two
    intervals; hutch reconnects and delivers every confirmed message (the old connection's
    unacked ones come again once the broker gives up on it)."""
    async with Proxy.to(amqp_url) as proxy:
        noticed: list[float] = []

        async def fault(traffic: Traffic) -> None:
            lost = asyncio.Event()
            traffic.connection.add_disconnect_callback(lambda _c, _e: lost.set())
            started = time.monotonic()
            proxy.black_hole()
            await asyncio.wait_for(lost.wait(), 10)
            noticed.append(time.monotonic() - started)

        heartbeat = 2
        await run_fault(proxy.url(amqp_url, f"heartbeat={heartbeat}"), name, fault)
        # Within 2 intervals, plus room for a late event loop on a busy machine.
        assert noticed[0] <= 2 * heartbeat + 0.5, noticed
    await delete_queue(amqp_url, name)


async def test_delay_below_the_heartbeat_is_not_mistaken_for_a_dead_broker(
    amqp_url: str, name: str
) -> None:
    """Half a second of added latency each way slows traffic down but causes no reconnect."""
    async with Proxy.to(amqp_url) as proxy:

        async def fault(traffic: Traffic) -> None:
            proxy.delay = 0.5
            await traffic.confirmed_more(3, 20)
            proxy.delay = 0.0

        traffic = await run_fault(
            proxy.url(amqp_url, "heartbeat=2"), name, fault, expect_reconnect=False
        )
        assert traffic.reconnects == 0
        assert traffic.publish_errors == []
    await delete_queue(amqp_url, name)


async def test_publish_while_the_broker_stays_away_raises_in_time(amqp_url: str) -> None:
    """With the broker unreachable for longer than reconnect_timeout, publish raises
    ConnectionLost after that bound; once the broker is back, publishing works again."""
    async with Proxy.to(amqp_url) as proxy:
        connection = await hutch.connect_robust(
            proxy.url(amqp_url, f"heartbeat={HEARTBEAT}"), **{**ROBUST, "reconnect_timeout": 1}
        )
        channel = await connection.channel()
        lost = asyncio.Event()
        connection.add_disconnect_callback(lambda _c, _e: lost.set())
        back = asyncio.Event()
        connection.add_reconnect_callback(lambda _c: back.set())
        await proxy.refuse()
        proxy.cut()
        await asyncio.wait_for(lost.wait(), 5)
        started = time.monotonic()
        with pytest.raises(hutch.ConnectionLost, match="not restored within 1 s"):
            await channel.publish(b"x", "nowhere")
        assert 0.9 <= time.monotonic() - started <= 3
        await proxy.accept()
        await asyncio.wait_for(back.wait(), 10)
        await channel.publish(b"x", "nowhere")
        await connection.close()


async def test_a_list_of_brokers_fails_over_to_the_next(amqp_url: str, name: str) -> None:
    """With two broker addresses, losing the first moves the connection to the second, where
    the consumer resumes and nothing confirmed is lost."""
    async with Proxy.to(amqp_url) as first, Proxy.to(amqp_url) as second:
        urls = [first.url(amqp_url, "heartbeat=1"), second.url(amqp_url, "heartbeat=1")]

        connection_url: list[str] = []

        async def fault(traffic: Traffic) -> None:
            await first.refuse()
            first.cut()
            await traffic.wait_for(lambda: traffic.reconnects >= 1, 30, "the failover")
            connection_url.append(traffic.connection.url)

        await run_fault(urls, name, fault)
        assert f":{second.port}/" in connection_url[0]
    await delete_queue(amqp_url, name)


async def test_several_hosts_in_one_url_and_a_late_broker(amqp_url: str) -> None:
    """``amqp://u:p@h1,h2/`` skips a host that refuses; the first connect waits for a broker
    that comes up within initial_connect_timeout, and gives up clearly when none does."""
    async with Proxy.to(amqp_url) as down, Proxy.to(amqp_url) as up:
        await down.refuse()
        hosts = f"amqp://guest:guest@127.0.0.1:{down.port},127.0.0.1:{up.port}/"
        async with await hutch.connect_robust(hosts, **ROBUST) as connection:
            assert f":{up.port}/" in connection.url
        await up.refuse()

        async def come_up() -> None:
            await asyncio.sleep(0.5)
            await up.accept()

        later = asyncio.ensure_future(come_up())
        async with await hutch.connect_robust(
            up.url(amqp_url), initial_connect_timeout=10, **ROBUST
        ) as connection:
            assert connection.is_connected
        await later
        await up.refuse()
        started = time.monotonic()
        with pytest.raises(hutch.ConnectError, match="gave up after retrying"):
            await hutch.connect_robust(up.url(amqp_url), initial_connect_timeout=1, **ROBUST)
        assert time.monotonic() - started < 4


async def test_restore_brings_back_qos_exchanges_server_named_queues_bindings_consumers(
    amqp_url: str, name: str
) -> None:
    """After a cut, the broker has dropped the exclusive server-named queue and the auto-delete
    exchange; hutch redeclares both (same queue name), rebinds, restores the consumer with its
    callback and QoS, keeps confirm mode and the return listener."""
    async with Proxy.to(amqp_url) as proxy:
        connection = await hutch.connect_robust(proxy.url(amqp_url, "heartbeat=1"), **ROBUST)
        back = asyncio.Event()
        connection.add_reconnect_callback(lambda _c: back.set())
        channel = await connection.channel()
        await channel.set_qos(2)
        exchange = f"{name}.x"
        await channel.exchange_declare(exchange, "topic", auto_delete=True)
        queue = (await channel.queue_declare("", exclusive=True)).queue
        await channel.queue_bind(queue, exchange, "jobs.#")
        held: asyncio.Queue[hutch.IncomingMessage] = asyncio.Queue()
        await channel.consume(queue, held.put_nowait)
        returned: asyncio.Queue[hutch.Unroutable] = asyncio.Queue()
        channel.add_return_listener(returned.put_nowait)

        proxy.cut()
        await asyncio.wait_for(back.wait(), 10)

        for number in range(4):
            await channel.publish(f"{number}".encode(), f"jobs.{number}", exchange=exchange)
        first = [await asyncio.wait_for(held.get(), 5) for _ in range(2)]
        # QoS 2: a third delivery only comes once one of the two is acked.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(held.get(), 0.5)
        await first[0].ack()
        third = await asyncio.wait_for(held.get(), 5)
        assert [m.body for m in [*first, third]] == [b"0", b"1", b"2"]
        assert third.routing_key == "jobs.2"
        for message in [first[1], third]:
            await message.ack()
        await (await asyncio.wait_for(held.get(), 5)).ack()
        # A mandatory message nobody takes still reaches the return listener.
        with pytest.raises(hutch.Unroutable):
            await channel.publish(b"lost", "nobody.home", exchange=exchange, mandatory=True)
        assert (await asyncio.wait_for(returned.get(), 5)).routing_key == "nobody.home"
        await connection.close()


async def test_stale_delivery_is_not_acked_on_the_new_connection(
    amqp_url: str, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery received before the cut and acked after the reconnect is dropped with a
    warning (the broker would close the channel for an unknown tag); it comes again."""
    async with Proxy.to(amqp_url) as proxy:
        connection = await hutch.connect_robust(proxy.url(amqp_url, "heartbeat=1"), **ROBUST)
        back = asyncio.Event()
        connection.add_reconnect_callback(lambda _c: back.set())
        channel = await connection.channel()
        await channel.queue_declare(name, auto_delete=False)
        got: asyncio.Queue[hutch.IncomingMessage] = asyncio.Queue()
        await channel.consume(name, got.put_nowait)
        await channel.publish(b"once", name)
        old = await asyncio.wait_for(got.get(), 5)
        assert not old.redelivered
        proxy.cut()
        await asyncio.wait_for(back.wait(), 10)
        again = await asyncio.wait_for(got.get(), 5)
        assert again.redelivered
        caplog.set_level(logging.WARNING, logger="hutch")
        await old.ack()
        assert f"not settling delivery {old.delivery_tag}" in caplog.text
        await again.ack()
        await channel.publish(b"still open", name)  # a 406 would have closed the channel
        assert (await asyncio.wait_for(got.get(), 5)).body == b"still open"
        assert channel.state is hutch.ChannelState.OPEN
        assert "PRECONDITION_FAILED" not in caplog.text
        await channel.queue_delete(name)
        await connection.close()


async def test_exclusive_queue_and_consumer_held_by_the_old_connection_are_retried(
    amqp_url: str, name: str
) -> None:
    """When the client reconnects while the broker still holds the old connection (a stranded
    socket), RESOURCE_LOCKED / ACCESS_REFUSED are retried until the broker lets go, and the
    exclusive consumer resumes."""
    async with Proxy.to(amqp_url) as proxy:
        connection = await hutch.connect_robust(proxy.url(amqp_url, "heartbeat=1"), **ROBUST)
        back = asyncio.Event()
        connection.add_reconnect_callback(lambda _c: back.set())
        channel = await connection.channel()
        await channel.queue_declare(name, exclusive=True)
        got: asyncio.Queue[bytes] = asyncio.Queue()
        await channel.consume(name, lambda message: got.put_nowait(message.body), no_ack=True)
        await channel.publish(b"before", name)
        assert await asyncio.wait_for(got.get(), 5) == b"before"
        async with LogWatch("retrying in") as retried:
            proxy.strand()  # the broker keeps the old connection until its heartbeat expires
            await asyncio.wait_for(back.wait(), 20)
        assert retried.count >= 1
        await channel.publish(b"after", name)
        assert await asyncio.wait_for(got.get(), 5) == b"after"
        await connection.close()


async def test_close_while_reconnecting_releases_every_task(amqp_url: str) -> None:
    """close() while the broker is unreachable stops the reconnect loop at once; no hutch task
    is left, and a publish that was waiting gets ConnectionClosed."""
    async with Proxy.to(amqp_url) as proxy:
        before = set(asyncio.all_tasks())
        connection = await hutch.connect_robust(proxy.url(amqp_url, "heartbeat=1"), **ROBUST)
        channel = await connection.channel()
        lost = asyncio.Event()
        connection.add_disconnect_callback(lambda _c, _e: lost.set())
        await proxy.refuse()
        proxy.cut()
        await asyncio.wait_for(lost.wait(), 5)
        waiting = asyncio.ensure_future(channel.publish(b"x", "q"))
        await asyncio.sleep(0)
        started = time.monotonic()
        await connection.close()
        assert time.monotonic() - started < 2
        with pytest.raises(hutch.ConnectionClosed):
            await waiting
        assert other_tasks(before) == set()
        assert connection.state is hutch.ConnectionState.CLOSED


# -- broker faults on the private node ------------------------------------------------------


@pytest.mark.slow
async def test_frozen_broker(private_rabbitmq: Broker, name: str) -> None:
    """A broker stopped with SIGSTOP (sockets open, nothing answers) is noticed by heartbeats;
    after SIGCONT hutch reconnects and nothing confirmed is lost."""
    node = private_rabbitmq.node
    assert node is not None

    async def fault(traffic: Traffic) -> None:
        lost = asyncio.Event()
        traffic.connection.add_disconnect_callback(lambda _c, _e: lost.set())
        node.freeze()
        try:
            await asyncio.wait_for(lost.wait(), 10)
            await asyncio.sleep(1)  # frozen a while longer: reconnect attempts time out
        finally:
            node.cont()

    url = f"{private_rabbitmq.url}?heartbeat={HEARTBEAT}&connection_timeout=1"
    await run_fault(url, name, fault)
    await delete_queue(private_rabbitmq.url, name)


@pytest.mark.slow
async def test_broker_restart(private_rabbitmq: Broker, name: str) -> None:
    """The broker stopped and started again: hutch reconnects on its own, redeclares, and every
    confirmed (persistent, durable-queue) message is delivered."""
    node = private_rabbitmq.node
    assert node is not None

    async def fault(traffic: Traffic) -> None:
        await asyncio.to_thread(node.restart)

    url = f"{private_rabbitmq.url}?heartbeat={HEARTBEAT}&connection_timeout=2"
    traffic = await run_fault(url, name, fault, persistent=True)
    assert traffic.publish_errors, "publishes during the restart should have failed in time"
    await delete_queue(private_rabbitmq.url, name)


@pytest.mark.slow
async def test_close_all_connections(private_rabbitmq: Broker, name: str) -> None:
    """``rabbitmqctl close_all_connections`` (320 CONNECTION_FORCED): hutch reconnects at once
    and loses nothing."""
    node = private_rabbitmq.node
    assert node is not None

    async def fault(traffic: Traffic) -> None:
        async with LogWatch("CONNECTION_FORCED") as forced:
            await asyncio.to_thread(node.ctl, "close_all_connections", "hutch test")
            await forced.wait(10)

    url = f"{private_rabbitmq.url}?heartbeat={HEARTBEAT}"
    await run_fault(url, name, fault)
    await delete_queue(private_rabbitmq.url, name)
