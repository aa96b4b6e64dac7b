"""hutch's RPC and aio-pika's JsonRPC call each other, both ways, on the real RabbitMQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import pytest
from aio_pika.patterns import JsonRPC as AioJsonRPC
from aio_pika.patterns.rpc import JsonRPCError

import hutch
from hutch.patterns import RPC
from tests.support.rpc import FirstCallWaits, observe_dead_letters

WAIT = 10


class Refused(Exception):
    """An exception class neither side lists."""


@asynccontextmanager
async def aio_rpc(url: str, prefetch: int = 0) -> AsyncIterator[AioJsonRPC]:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        if prefetch:
            await channel.set_qos(prefetch_count=prefetch)
        rpc = await AioJsonRPC.create(channel)
        yield rpc
        await rpc.close()
    finally:
        await connection.close()


@asynccontextmanager
async def hutch_rpc(url: str, **options: object) -> AsyncIterator[RPC]:
    connection = await hutch.connect(url)
    try:
        rpc = await RPC.create(await connection.channel(), **options)
        yield rpc
        await rpc.close()
    finally:
        await connection.close()


# -- aio-pika caller, hutch callee -----------------------------------------------------------


async def test_aio_pika_caller_gets_hutch_results_and_errors(amqp_url: str, name: str) -> None:
    """aio-pika's JsonRPC caller gets a hutch callee's result, and its errors in JsonRPC's
    format (type, message, args)."""

    async def divide(*, a: int, b: int) -> float:
        return a / b

    async with hutch_rpc(amqp_url) as callee, aio_rpc(amqp_url) as caller:
        await callee.register(name, divide, auto_delete=True)
        assert await caller.call(name, kwargs={"a": 6, "b": 3}) == 2.0
        assert await getattr(caller.proxy, name)(a=1, b=4) == 0.25
        with pytest.raises(JsonRPCError) as info:
            await caller.call(name, kwargs={"a": 1, "b": 0})
        error = info.value.args[1]["error"]
        assert error["type"] == "ZeroDivisionError"
        assert error["args"] == ["division by zero"]
        assert error["message"] == "ZeroDivisionError('division by zero')"


async def test_aio_pika_caller_sees_its_expired_call_dead_lettered_by_a_hutch_callee(
    amqp_url: str, name: str
) -> None:
    """A call that expires in a hutch callee's queue comes back to aio-pika's caller through
    rpc.dlx (a TimeoutError there) and is never run."""
    work = FirstCallWaits()

    async with hutch_rpc(amqp_url, concurrency=1) as callee, aio_rpc(amqp_url) as caller:
        await callee.register(name, work, auto_delete=True)
        first = asyncio.ensure_future(caller.call(name, kwargs={"n": 1}))
        await asyncio.wait_for(work.started.wait(), WAIT)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(caller.call(name, kwargs={"n": 2}, expiration=0.1), WAIT)
        work.release.set()
        assert await asyncio.wait_for(first, WAIT) == 1
        assert await caller.call(name, kwargs={"n": 3}) == 3
    assert work.ran == [1, 3]


# -- hutch caller, aio-pika callee -----------------------------------------------------------


async def test_hutch_caller_gets_aio_pika_results_and_errors(amqp_url: str, name: str) -> None:
    """hutch's caller gets an aio-pika JsonRPC callee's result; its builtin errors are raised
    as themselves, others as RemoteError naming the type."""

    async def lookup(*, key: str) -> str:
        if key == "refused":
            raise Refused("no access", key)
        return {"a": "alpha"}[key]

    async with aio_rpc(amqp_url) as callee, hutch_rpc(amqp_url) as caller:
        await callee.register(name, lookup, auto_delete=True)
        assert await caller.call(name, {"key": "a"}) == "alpha"
        with pytest.raises(KeyError) as missing:
            await caller.call(name, {"key": "b"})
        assert missing.value.args == ("b",)
        with pytest.raises(hutch.RemoteError) as remote:
            await caller.call(name, {"key": "refused"})
        assert remote.value.type == "Refused"
        assert remote.value.args_ == ["no access", "refused"]


@pytest.mark.parametrize("reply_path", ["direct", "queue"])
async def test_hutch_call_that_expires_at_an_aio_pika_callee_is_not_run(
    amqp_url: str, name: str, reply_path: str
) -> None:
    """A hutch call that expires in an aio-pika callee's queue raises CallTimeout and is never
    run (with the reply queue it comes back dead-lettered, without waiting for the deadline)."""
    work = FirstCallWaits()

    async with (
        aio_rpc(amqp_url, prefetch=1) as callee,
        hutch_rpc(amqp_url, reply_path=reply_path) as caller,
    ):
        await callee.register(name, work, auto_delete=True)
        first = asyncio.ensure_future(caller.call(name, {"n": 1}))
        await asyncio.wait_for(work.started.wait(), WAIT)
        if reply_path == "queue":
            with pytest.raises(hutch.CallTimeout, match="expired in its queue"):
                await asyncio.wait_for(
                    caller.call(name, {"n": 2}, timeout=None, expiration=0.1), WAIT
                )
        else:
            dead = await observe_dead_letters(caller.channel, name)
            with pytest.raises(hutch.CallTimeout):
                await caller.call(name, {"n": 2}, timeout=0.2)
            expired = await asyncio.wait_for(dead.get(), WAIT)
            assert expired.body == b'{"n": 2}'
        work.release.set()
        assert await asyncio.wait_for(first, WAIT) == 1
        assert await caller.call(name, {"n": 3}) == 3
    assert work.ran == [1, 3]


async def test_hutch_and_aio_pika_callees_share_a_queue(amqp_url: str, name: str) -> None:
    """Both kinds of callee declare the method queue with the same arguments, so they serve
    one name together without a declaration conflict."""
    served: set[str] = set()

    async def by_aio(*, n: int) -> str:
        served.add("aio-pika")
        return "aio-pika"

    async def by_hutch(*, n: int) -> str:
        served.add("hutch")
        return "hutch"

    async with aio_rpc(amqp_url) as aio_callee, hutch_rpc(amqp_url) as hutch_callee:
        await hutch_callee.register(name, by_hutch)
        await aio_callee.register(name, by_aio)
        results = {await hutch_callee.call(name, {"n": n}) for n in range(8)}
        assert results == {"aio-pika", "hutch"} == served
        await hutch_callee.channel.queue_delete(name)
