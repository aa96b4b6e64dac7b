"""Which side of an RPC round trip costs what: hutch's caller and callee, each against the floor.

Run (about 1 minute; starts and removes its own node unless given ``--node DIR``)::

    .venv/bin/python bench/rpc_sides.py [--blocks 16] [--node DIR]

Two experiments, each alternating blocks of 300 calls awaited one by one (the first block of
each variant is a warm-up), so that the machine's drift reaches every variant alike:

- **callees**, called by the floor caller (``floor_client.py``): hutch's ``RPC.register``
  (``pattern``), a bare hutch consumer with an ``async def`` callback that replies and acks
  (``bare async``), the same with a plain ``def`` callback (``bare def``), and the floor callee.
  Each callee is a process of its own; its CPU is read from /proc.
- **callers**, calling the floor callee: ``RPC.call`` (``pattern``), a bare hutch caller
  (``publish_nowait`` with direct reply-to and a future per correlation id, ``bare``), and the
  floor caller, all in this process.

It prints the p50, the p90 and the CPU per call of each variant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import floor_client
import harness
import hutch
from hutch.patterns import RPC

CALLS = 300
CALLEES = ("pattern", "bare async", "bare def", "floor")
ARGS = {"x": 1, "y": 2}


async def multiply(*, x: int, y: int) -> int:
    return x * y


def _queue(kind: str) -> str:
    return "rpc-sides." + kind.replace(" ", "-")


async def _serve(kind: str, url: str) -> None:
    """The callee process: serve ``kind`` until stdin closes."""
    name = _queue(kind)
    if kind == "floor":
        rpc = await floor_client.FloorRPC.create(url, 60_000)
        await rpc.register(name, multiply)
    elif kind == "pattern":
        connection = await hutch.connect(url)
        await (await RPC.create(await connection.channel())).register(
            name, multiply, auto_delete=True
        )
    else:
        connection = await hutch.connect(url)
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(32)
        await channel.queue_declare(name, auto_delete=True)

        def reply(message: hutch.IncomingMessage) -> None:
            kwargs = json.loads(message.body)
            result = kwargs["x"] * kwargs["y"]
            channel.publish_nowait(
                hutch.Message(
                    json.dumps(result).encode(),
                    content_type="application/json",
                    correlation_id=message.correlation_id,
                    type="result",
                ),
                message.reply_to or "",
            )

        async def on_call_async(message: hutch.IncomingMessage) -> None:
            reply(message)
            await message.ack()

        def on_call(message: hutch.IncomingMessage) -> None:
            reply(message)
            message.ack()

        await channel.consume(name, on_call_async if kind == "bare async" else on_call)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def _report(
    title: str, latencies: dict[str, list[float]], cpu: dict[str, float], calls: int
) -> None:
    print(f"\n| {title} | p50 ms | p90 ms | CPU µs/call |\n|---|---|---|---|")
    for kind, values in latencies.items():
        values.sort()
        p50 = statistics.median(values) * 1e3
        p90 = values[int(len(values) * 0.9)] * 1e3
        print(f"| {kind} | {p50:.3f} | {p90:.3f} | {cpu[kind] / calls * 1e6:.0f} |")


async def _alternate(
    variants: dict[str, Callable[[], Awaitable[Any]]],
    blocks: int,
    cpu_of: Callable[[str], float],
) -> tuple[dict[str, list[float]], dict[str, float], int]:
    latencies: dict[str, list[float]] = {kind: [] for kind in variants}
    cpu = dict.fromkeys(variants, 0.0)
    clock = time.perf_counter
    for block in range(blocks):
        for kind, call in variants.items():
            before = cpu_of(kind)
            for _ in range(CALLS):
                start = clock()
                result = await call()
                if block:
                    latencies[kind].append(clock() - start)
            assert result == 2, (kind, result)
            if block:
                cpu[kind] += cpu_of(kind) - before
    return latencies, cpu, CALLS * (blocks - 1)


async def _callees(url: str, blocks: int, peers: dict[str, harness.Peer]) -> None:
    caller = await floor_client.FloorRPC.create(url, 60_000)

    def call(kind: str) -> Callable[[], Awaitable[Any]]:
        return lambda: caller.proxy.__getattr__(_queue(kind))(**ARGS)

    variants = {kind: call(kind) for kind in CALLEES}
    result = await _alternate(variants, blocks, lambda kind: peers[kind].cpu_seconds())
    _report("callee (floor caller)", *result)
    await caller.close()


async def _callers(url: str, blocks: int) -> None:
    connection = await hutch.connect(url)
    rpc = await RPC.create(await connection.channel())
    channel = await connection.channel(publisher_confirms=False)
    loop = asyncio.get_running_loop()
    pending: dict[str, asyncio.Future[Any]] = {}
    ids = iter(range(1, 1 << 62))

    def on_reply(message: hutch.IncomingMessage) -> None:
        pending.pop(message.correlation_id or "").set_result(json.loads(message.body))

    await channel.consume("amq.rabbitmq.reply-to", on_reply, no_ack=True)

    async def bare() -> Any:
        correlation_id = str(next(ids))
        future = pending[correlation_id] = loop.create_future()
        channel.publish_nowait(
            hutch.Message(
                json.dumps(ARGS).encode(),
                content_type="application/json",
                correlation_id=correlation_id,
                reply_to="amq.rabbitmq.reply-to",
                expiration=60,
            ),
            _queue("floor"),
        )
        return await future

    floor = await floor_client.FloorRPC.create(url, 60_000)
    variants: dict[str, Callable[[], Awaitable[Any]]] = {
        "pattern": lambda: rpc.call(_queue("floor"), ARGS),
        "bare": bare,
        "floor": lambda: floor.proxy.__getattr__(_queue("floor"))(**ARGS),
    }

    def own_cpu(_kind: str) -> float:
        times = os.times()
        return times.user + times.system

    _report("caller (floor callee)", *await _alternate(variants, blocks, own_cpu))
    await floor.close()
    await rpc.close()
    await connection.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--node", type=Path, default=None)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(*args.serve))
        return 0
    with harness.private_node(args.node) as node:
        print(", ".join(f"{k}: {v}" for k, v in harness.machine().items()))
        peers = {kind: harness.Peer(__file__, "--serve", kind, node.url) for kind in CALLEES}
        try:
            for peer in peers.values():
                peer.start()
            asyncio.run(_callees(node.url, args.blocks, peers))
            asyncio.run(_callers(node.url, args.blocks))
        finally:
            for peer in peers.values():
                peer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
