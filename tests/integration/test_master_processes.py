"""Master/Worker across processes and libraries, against the real RabbitMQ: a worker killed with
SIGKILL, aio-pika's JsonMaster on either side, the seed's two programs, and a reconnect."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.patterns
import pytest

import hutch
from hutch.patterns import Master
from tests.support.brokers import Broker

ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0  # bound on any single wait; a subprocess start is slow on a loaded machine

# A worker process: its handler says "started <n>" and then never returns.
HANGING_WORKER = """
import asyncio, sys
import hutch
from hutch.patterns import Master

async def main():
    connection = await hutch.connect(sys.argv[1])
    master = Master(await connection.channel())

    async def handler(*, n):
        print("started", n, flush=True)
        await asyncio.Event().wait()

    await master.create_worker(sys.argv[2], handler)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

# Runs one of the seed's programs unchanged, with `hutch.connect_robust` pointed at the test
# broker (keeping the program's ?name=...), and with each worker announcing "ready" once its
# queue is consumed and "handled <task_id>" after each task (the seed's handler prints nothing:
# it rejects or nacks every task).
SEED_RUNNER = """
import runpy, sys
from urllib.parse import urlsplit
import hutch
import hutch.patterns

test_url, program = sys.argv[1], sys.argv[2]
real_connect_robust = hutch.connect_robust

async def connect_robust(url, **options):
    target = urlsplit(test_url)._replace(query=urlsplit(url).query).geturl()
    return await real_connect_robust(target, **options)

hutch.connect_robust = connect_robust
real_create_worker = hutch.patterns.Master.create_worker

async def create_worker(self, queue_name, func, **options):
    async def announced(**kwargs):
        try:
            return await func(**kwargs)
        finally:
            print("handled", kwargs.get("task_id"), flush=True)

    worker = await real_create_worker(self, queue_name, announced, **options)
    print("ready", flush=True)
    return worker

hutch.patterns.Master.create_worker = create_worker
sys.argv = [program]
runpy.run_path(program, run_name="__main__")
"""


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def read_line(process: asyncio.subprocess.Process, timeout: float = WAIT) -> str:
    """The next line the process prints; fails with its stderr if it exits first."""
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout)
    if not line:
        assert process.stderr is not None
        error = await process.stderr.read()
        raise AssertionError(f"the process exited early:\n{error.decode(errors='replace')}")
    return line.decode().strip()


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
    await process.wait()


@pytest.fixture
async def master(amqp_url: str, name: str) -> AsyncIterator[Master]:
    async with await hutch.connect(amqp_url) as connection:
        master = Master(await connection.channel())
        yield master
        await master.close()
        for queue in (name, f"{name}.dead", *(f"{name}.retry.{ms}" for ms in (1000, 2000, 4000))):
            await master.channel.queue_delete(queue)


async def test_worker_killed_mid_task_loses_nothing(
    amqp_url: str, master: Master, name: str
) -> None:
    """A worker process SIGKILLed mid-task loses nothing: the task is redelivered."""
    process = await spawn("-c", HANGING_WORKER, amqp_url, name)
    try:
        assert await read_line(process) == "ready"
        await master.create_task(name, kwargs={"n": 7})
        assert await read_line(process) == "started 7"
        process.kill()
        await process.wait()
    finally:
        await stop(process)

    got: asyncio.Future[hutch.IncomingMessage] = asyncio.get_running_loop().create_future()

    async def on_message(message: hutch.IncomingMessage) -> None:
        await message.ack()
        if not got.done():
            got.set_result(message)

    await master.channel.consume(name, on_message)
    again = await asyncio.wait_for(got, WAIT)
    assert json.loads(again.body) == {"n": 7}
    assert again.redelivered


async def test_aio_pika_json_master_feeds_a_hutch_worker(
    amqp_url: str, master: Master, name: str
) -> None:
    """Tasks created by aio-pika's JsonMaster reach a hutch worker's handler as kwargs."""
    received: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def handler(**kwargs: Any) -> None:
        received.append(kwargs)
        if len(received) == 2:
            done.set()

    await master.create_worker(name, handler, auto_delete=True)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        aio_master = aio_pika.patterns.JsonMaster(channel)
        await aio_master.create_task(name, kwargs={"task_id": 1, "text": "héllo"})
        await getattr(aio_master.proxy, name)(task_id=2)
        await asyncio.wait_for(done.wait(), WAIT)
    assert received == [{"task_id": 1, "text": "héllo"}, {"task_id": 2}]


async def test_hutch_master_feeds_an_aio_pika_json_master_worker(
    amqp_url: str, master: Master, name: str
) -> None:
    """A hutch Master feeds an aio-pika JsonMaster worker sharing the queue's declaration."""
    received: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def handler(**kwargs: Any) -> None:
        received.append(kwargs)
        if len(received) == 2:
            done.set()

    hutch_worker = await master.create_worker(name, handler, auto_delete=True)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        aio_master = aio_pika.patterns.JsonMaster(channel)
        await aio_master.create_worker(name, handler, auto_delete=True)
        await hutch_worker.close()  # from now on only the aio-pika worker consumes
        await master.create_task(name, kwargs={"task_id": 1, "text": "héllo"})
        await getattr(master.proxy, name)(task_id=2)
        await asyncio.wait_for(done.wait(), WAIT)
    assert received == [{"task_id": 1, "text": "héllo"}, {"task_id": 2}]


async def test_seed_programs_run_unchanged_and_tasks_flow(amqp_url: str) -> None:
    """The seed's two programs run unchanged as processes; all 2000 tasks reach the worker."""
    worker = await spawn("-c", SEED_RUNNER, amqp_url, str(ROOT / "examples" / "worker.py"))
    try:
        assert await read_line(worker) == "ready"
        master = await spawn("-c", SEED_RUNNER, amqp_url, str(ROOT / "examples" / "master.py"))
        try:
            _out, err = await asyncio.wait_for(master.communicate(), 60)
            assert master.returncode == 0, err.decode(errors="replace")
        finally:
            await stop(master)
        handled: dict[int, int] = {}
        while sum(handled.values()) < 2000:
            word, task_id = (await read_line(worker)).split()
            assert word == "handled"
            handled[int(task_id)] = handled.get(int(task_id), 0) + 1
        assert handled == dict.fromkeys(range(1000), 2)  # once by proxy, once by create_task
    finally:
        await stop(worker)


@pytest.mark.slow
async def test_worker_keeps_working_after_a_reconnect(private_rabbitmq: Broker, name: str) -> None:
    """On a robust connection a worker keeps handling tasks after a reconnect."""
    assert private_rabbitmq.node is not None
    connection = await hutch.connect_robust(private_rabbitmq.url, reconnect_delay=0.1)
    async with connection:
        reconnected = asyncio.Event()
        connection.add_reconnect_callback(lambda _conn: reconnected.set())
        master = Master(await connection.channel())
        received: list[dict[str, Any]] = []
        arrived = asyncio.Event()

        async def handler(**kwargs: Any) -> None:
            received.append(kwargs)
            arrived.set()

        worker = await master.create_worker(name, handler, auto_delete=True)
        await master.create_task(name, kwargs={"n": 1})
        await asyncio.wait_for(arrived.wait(), WAIT)
        arrived.clear()
        await asyncio.to_thread(private_rabbitmq.node.ctl, "close_all_connections", "test")
        await asyncio.wait_for(reconnected.wait(), WAIT)
        await master.create_task(name, kwargs={"n": 2})
        await asyncio.wait_for(arrived.wait(), WAIT)
        assert received == [{"n": 1}, {"n": 2}]
        await worker.close()
        for queue in (f"{name}.dead", *worker.retry_queues):
            await master.channel.queue_delete(queue)
