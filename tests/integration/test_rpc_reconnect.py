"""RPC across a lost connection: the connections go through a TCP proxy that breaks them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

import hutch
from hutch.patterns import RPC
from tests.support.proxy import Proxy

WAIT = 10  # well under the calls' own 60 s deadline: a failure here is not a timeout


@asynccontextmanager
async def robust(url: str) -> AsyncIterator[tuple[hutch.Connection, asyncio.Event]]:
    """A robust connection and an event set on each of its reconnects."""
    connection = await hutch.connect_robust(url, reconnect_delay=0.1)
    back = asyncio.Event()
    connection.add_reconnect_callback(lambda _c: back.set())
    try:
        yield connection, back
    finally:
        await connection.close()


@pytest.mark.parametrize("reply_path", ["direct", "queue"])
async def test_lost_connection_fails_calls_at_once_and_rpc_comes_back(
    amqp_url: str, name: str, reply_path: str
) -> None:
    """Breaking the connections fails the call in flight at once with ConnectionLost; after
    the reconnect the callee's registration is back, calls succeed, and a call to an
    unregistered name still fails at once."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def work(*, n: int) -> int:
        if n < 0:
            started.set()
            await release.wait()
        return n

    async with Proxy.to(amqp_url) as proxy:
        url = proxy.url(amqp_url)
        async with (
            robust(url) as (caller_conn, caller_back),
            robust(url) as (
                callee_conn,
                callee_back,
            ),
        ):
            caller = await RPC.create(await caller_conn.channel(), reply_path=reply_path)
            callee = await RPC.create(await callee_conn.channel())
            await callee.register(name, work, auto_delete=True)
            assert await caller.call(name, {"n": 1}) == 1

            in_flight = asyncio.ensure_future(caller.call(name, {"n": -1}))
            await asyncio.wait_for(started.wait(), WAIT)
            proxy.cut()
            with pytest.raises(hutch.ConnectionLost) as lost:
                await asyncio.wait_for(in_flight, WAIT)
            assert isinstance(lost.value, ConnectionError)
            assert caller.in_flight == 0
            release.set()

            await asyncio.wait_for(asyncio.gather(caller_back.wait(), callee_back.wait()), 30)
            assert await asyncio.wait_for(caller.call(name, {"n": 2}), WAIT) == 2
            with pytest.raises(hutch.Unroutable, match="no callee registered"):
                await asyncio.wait_for(caller.call(f"{name}.nobody", timeout=None), WAIT)
            await caller.close()
            await callee.close()


async def test_queue_reply_path_gets_expired_calls_back_after_a_reconnect(
    amqp_url: str, name: str
) -> None:
    """After a reconnect, the reply queue is bound to rpc.dlx again: a call that expires in the
    callee's queue still ends at once."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def block() -> None:
        started.set()
        await release.wait()

    async with await hutch.connect(amqp_url) as callee_conn:
        callee = await RPC.create(await callee_conn.channel(), concurrency=1)
        await callee.register(name, block, auto_delete=True)
        async with Proxy.to(amqp_url) as proxy, robust(proxy.url(amqp_url)) as (conn, _back):
            caller = await RPC.create(await conn.channel(), reply_path="queue")
            # Reconnect callbacks run in order: this one runs after the RPC's own rebinding.
            rebound = asyncio.Event()
            conn.add_reconnect_callback(lambda _c: rebound.set())
            proxy.cut()
            await asyncio.wait_for(rebound.wait(), 30)
            first = asyncio.ensure_future(caller.call(name))
            await asyncio.wait_for(started.wait(), WAIT)
            with pytest.raises(hutch.CallTimeout, match="expired in its queue"):
                await asyncio.wait_for(caller.call(name, timeout=None, expiration=0.1), WAIT)
            release.set()
            assert await asyncio.wait_for(first, WAIT) is None
            await caller.close()
        await callee.close()


async def test_direct_reply_path_recovers_while_the_broker_still_sees_the_old_connection(
    amqp_url: str, name: str
) -> None:
    """When the client's side of the connection dies but the broker has not noticed yet, the
    direct reply-to caller works again as soon as it has reconnected (nothing of the old
    connection is locked)."""

    async def double(*, x: int) -> int:
        return 2 * x

    async with await hutch.connect(amqp_url) as callee_conn:
        callee = await RPC.create(await callee_conn.channel())
        await callee.register(name, double, auto_delete=True)
        async with Proxy.to(amqp_url) as proxy, robust(proxy.url(amqp_url)) as (conn, back):
            caller = await RPC.create(await conn.channel())
            assert await caller.call(name, {"x": 1}) == 2
            proxy.strand()
            await asyncio.wait_for(back.wait(), WAIT)
            assert await asyncio.wait_for(caller.call(name, {"x": 2}), WAIT) == 4
            await caller.close()
        await callee.close()
