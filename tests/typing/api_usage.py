"""How users call hutch, type-checked by mypy (strict) and never run.

If a public signature drifts so that ordinary, correct user code no longer type-checks, mypy
fails here. pytest does not collect this file (it has no tests).
"""

from __future__ import annotations

import asyncio
from typing import Any

import hutch
from hutch.patterns import RPC, Master, NackMessage, RejectMessage, Retry


async def client(url: str) -> None:
    async with await hutch.connect(url, client_properties={"connection_name": "typed"}) as conn:
        channel: hutch.Channel = await conn.channel()
        await channel.set_qos(10)
        info: hutch.QueueInfo = await channel.queue_declare("", exclusive=True)
        await channel.exchange_declare("ex", "topic", durable=True)
        await channel.queue_bind(info.queue, "ex", "a.#")
        await channel.publish(hutch.Message(b"x", headers={"k": 1}, expiration=5), info.queue)
        confirm: asyncio.Future[None] = channel.publish_nowait(b"raw", info.queue)
        await confirm

        async def on_message(message: hutch.IncomingMessage) -> None:
            body: bytes = message.body
            assert body
            await message.ack()

        tag: str = await channel.consume(info.queue, on_message)
        await channel.cancel(tag)
        got: hutch.IncomingMessage | None = await channel.get(info.queue, no_ack=True)
        assert got is None or got.redelivered in (True, False)
        await channel.close()


async def robust(urls: list[str]) -> hutch.ConnectionState:
    connection = await hutch.connect_robust(urls, reconnect_timeout=5.0)

    def lost(conn: Any, error: BaseException) -> None: ...

    connection.add_disconnect_callback(lost)
    state = connection.state
    await connection.close()
    return state


async def worker(*, task_id: int) -> None:
    if task_id % 2 == 0:
        raise RejectMessage(requeue=False)
    raise NackMessage(requeue=False)


async def multiply(*, x: int, y: int) -> int:
    return x * y


async def patterns(channel: hutch.Channel) -> int:
    master = Master(channel)
    await master.proxy.my_task_name(task_id=1)
    await master.create_task("my_task_name", kwargs={"task_id": 2})
    await master.create_tasks("my_task_name", [{"task_id": 3}, {"task_id": 4}])
    handle = await master.create_worker("my_task_name", worker, retry=Retry(attempts=1))
    await handle.close()

    rpc = await RPC.create(channel, timeout=10.0)
    await rpc.register("multiply", multiply, auto_delete=True)
    result: Any = await rpc.call("multiply", kwargs={"x": 2, "y": 3}, timeout=None)
    await rpc.proxy.multiply(x=1, y=2)
    await rpc.unregister(multiply)
    await rpc.close()
    return int(result)


app = hutch.App(concurrency=8)


@app.task
async def resize(*, path: str) -> None: ...


@app.task(name="thumbs", retry=Retry(attempts=2), durable=True)
def thumbs(*, path: str) -> None: ...


@app.rpc(concurrency=4)
async def add(*, a: int, b: int) -> int:
    return a + b


async def serve(connection: hutch.Connection) -> None:
    serving = await app.serve(connection)
    await serving.close()
    assert await add(a=1, b=2) == 3  # the decorators return the function unchanged
