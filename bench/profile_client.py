"""Profile hutch's hot path: a publish → deliver → ack cycle and an RPC-shaped round trip.

Run::

    .venv/bin/python bench/profile_client.py [--node DIR] [--count N] [--top 25] [--no-profile]

- ``cycle``: one connection, a publisher channel with confirms (window of 1000 through
  ``publish_nowait``) and a consumer channel (prefetch 1000) whose callback acks each message.
- ``one-by-one``: ``await channel.publish(...)`` in a loop (a broker round trip each).
- ``rpc``: calls awaited one by one; the caller publishes a request with ``reply_to`` =
  ``amq.rabbitmq.reply-to`` and a ``correlation_id``; the callee (same process, own connection)
  consumes the request queue, acks, and publishes the reply; the caller's reply consumer resolves
  the call's future.

For each it prints messages (or calls) per second, client CPU per message, event-loop iterations
per message (asyncio only) and, unless ``--no-profile``, the top functions by own time (cProfile).
A profile slows the run; compare rates only between runs with the same flags.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

import harness
import hutch

BODY = b"x" * 32


class CountingLoop(asyncio.SelectorEventLoop):
    """An asyncio loop that counts its iterations (``_run_once`` calls)."""

    iterations = 0

    def _run_once(self) -> None:
        CountingLoop.iterations += 1
        super()._run_once()  # type: ignore[misc]


async def cycle(url: str, count: int, sync: bool) -> None:
    queue = f"profile.cycle.{os.urandom(4).hex()}"
    async with await hutch.connect(url) as connection:
        pub = await connection.channel()
        sub = await connection.channel()
        await pub.queue_declare(queue, auto_delete=True)
        await sub.set_qos(1000)
        done, on_message = harness.acking_consumer(count, sync=sync)
        await sub.consume(queue, on_message)
        window: collections.deque[asyncio.Future[None]] = collections.deque()
        message = hutch.Message(BODY)
        for _ in range(count):
            if len(window) >= 1000:
                await window.popleft()
            window.append(pub.publish_nowait(message, queue))
        for future in window:
            await future
        await done


async def one_by_one(url: str, count: int) -> None:
    queue = f"profile.obo.{os.urandom(4).hex()}"
    async with await hutch.connect(url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(queue, auto_delete=True)
        message = hutch.Message(BODY)
        for _ in range(count):
            await channel.publish(message, queue)
        await channel.queue_delete(queue)


async def rpc(url: str, count: int) -> None:
    queue = f"profile.rpc.{os.urandom(4).hex()}"
    async with await hutch.connect(url) as server, await hutch.connect(url) as client:
        callee = await server.channel()
        await callee.queue_declare(queue, auto_delete=True)
        await callee.set_qos(100)

        async def serve(message: hutch.IncomingMessage) -> None:
            await callee.publish(
                hutch.Message(
                    message.body,
                    correlation_id=message.correlation_id,
                    content_type="application/json",
                ),
                message.reply_to or "",
            )
            await message.ack()

        await callee.consume(queue, serve)
        caller = await client.channel()
        pending: dict[str, asyncio.Future[bytes]] = {}

        def on_reply(message: hutch.IncomingMessage) -> None:
            future = pending.pop(message.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(message.body)

        await caller.consume("amq.rabbitmq.reply-to", on_reply, no_ack=True)
        loop = asyncio.get_running_loop()
        for number in range(count):
            cid = str(number)
            future: asyncio.Future[bytes] = loop.create_future()
            pending[cid] = future
            await caller.publish(
                hutch.Message(
                    BODY,
                    correlation_id=cid,
                    reply_to="amq.rabbitmq.reply-to",
                    content_type="application/json",
                ),
                queue,
            )
            await future


def run(name: str, factory: object, count: int, profile: bool, top: int, uvloop: bool) -> None:
    loop_factory = harness.new_loop_factory("uvloop") if uvloop else CountingLoop
    profiler = cProfile.Profile() if profile else None
    with asyncio.Runner(loop_factory=loop_factory) as runner:  # type: ignore[arg-type]
        runner.run(factory(max(count // 10, 10)))  # type: ignore[operator]
        time.sleep(0.5)  # let the broker finish with the warm-up's queue
        CountingLoop.iterations = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        times0 = os.times()
        if profiler is not None:
            profiler.enable()
        runner.run(factory(count))  # type: ignore[operator]
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        times = os.times()
        user, system = times.user - times0.user, times.system - times0.system
    per = "" if uvloop else f", {CountingLoop.iterations / count:.2f} loop iterations/msg"
    print(
        f"{name}: {count / wall:,.0f}/s, client CPU {cpu / count * 1e6:.1f} µs/msg{per} "
        f"(user {user / count * 1e6:.1f}, system {system / count * 1e6:.1f})",
        flush=True,
    )
    if profiler is not None:
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--node", type=Path, default=None)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--only", default="cycle,cycle-sync,one-by-one,rpc")
    args = parser.parse_args()
    wanted = args.only.split(",")
    with harness.private_node(args.node) as node:
        url = node.url
        profile = not args.no_profile
        if "cycle" in wanted:
            run(
                "cycle (async callback)",
                lambda n: cycle(url, n, sync=False),
                args.count,
                profile,
                args.top,
                args.uvloop,
            )
        if "cycle-sync" in wanted:
            run(
                "cycle (sync callback)",
                lambda n: cycle(url, n, sync=True),
                args.count,
                profile,
                args.top,
                args.uvloop,
            )
        if "one-by-one" in wanted:
            run(
                "publish one by one",
                lambda n: one_by_one(url, n),
                max(args.count // 10, 100),
                profile,
                args.top,
                args.uvloop,
            )
        if "rpc" in wanted:
            run(
                "rpc (one by one)",
                lambda n: rpc(url, n),
                max(args.count // 10, 100),
                profile,
                args.top,
                args.uvloop,
            )


if __name__ == "__main__":
    main()
