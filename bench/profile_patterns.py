"""Where the patterns' time goes: each hutch pattern against the bare client doing the same on
the wire, and cProfile of both sides.

Run::

    .venv/bin/python bench/profile_patterns.py [--node DIR] [--rounds 5] [--count N]
        [--loop asyncio|uvloop] [--profile] [--top 25]

- ``rpc``: calls awaited one by one, the callee in another process. Four pairings, interleaved
  over the rounds: pattern caller (``RPC.call``) or bare caller (``publish_nowait`` with
  ``reply_to=amq.rabbitmq.reply-to`` and a future per correlation id), against a pattern callee
  (``RPC.register``) or a bare callee (a plain consumer that publishes the reply and acks). The
  bare/bare pairing is the floor the client and the broker allow; the others show what each
  side of the pattern adds. Reported: median calls/s and p50/p99 latency.
- ``tasks``: ``Master.create_task`` one by one against ``channel.publish(mandatory=True)`` of
  the same persistent message (no worker; a queue declared beforehand), and a ``Worker`` draining
  a filled queue against a bare consumer (prefetch 64, ``async def`` callback awaiting ack).

With ``--profile`` the pattern caller runs under cProfile in this process and the pattern callee
under cProfile in its own; the top functions by own time are printed for both (a profile slows
the run: compare rates only between runs with the same flags).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import hutch

CALLEE_BARE = "profile.bare"
WORKER = ".worker"
WARMUP = 100


# -- callee process ------------------------------------------------------------------------------


async def _callee(url: str, name: str, profile_path: str) -> None:
    from hutch.patterns import RPC, Master

    async def multiply(*, x: int, y: int) -> int:
        return x * y

    async with await hutch.connect_robust(url) as connection:
        rpc = await RPC.create(await connection.channel())
        await rpc.register(name, multiply, auto_delete=True)
        bare = await connection.channel(publisher_confirms=False)
        await bare.set_qos(32)
        await bare.queue_declare(CALLEE_BARE + name, auto_delete=True)

        def on_call(message: hutch.IncomingMessage) -> None:
            kwargs = json.loads(message.body)
            body = json.dumps(kwargs["x"] * kwargs["y"]).encode()
            reply = hutch.Message(
                body,
                content_type="application/json",
                correlation_id=message.correlation_id,
                type="result",
            )
            assert message.reply_to is not None
            bare.publish_nowait(reply, message.reply_to)
            message.ack()

        await bare.consume(CALLEE_BARE + name, on_call)

        async def task(*, i: int) -> None:
            pass

        # the workers of the ``e2e`` cases: the pattern's and a bare consumer, both prefetch 64
        worker = await Master(await connection.channel()).create_worker(
            name + WORKER, task, auto_delete=True
        )
        consumer = await connection.channel()
        await consumer.set_qos(64)
        await consumer.queue_declare(CALLEE_BARE + name + WORKER, auto_delete=True)

        def on_task(message: hutch.IncomingMessage) -> None:
            json.loads(message.body)
            message.ack()

        await consumer.consume(CALLEE_BARE + name + WORKER, on_task)
        profiler = cProfile.Profile() if profile_path else None
        print("ready", flush=True)
        if profiler is not None:
            profiler.enable()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
        await rpc.close()
        await worker.close()
        for queue in (*worker.retry_queues, worker.dead_letter_queue):
            await consumer.queue_delete(queue)


# -- callers -------------------------------------------------------------------------------------


class BareCaller:
    """RPC calls with the bare client: what ``RPC.call`` does on the wire, nothing more."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.ids = 0

    async def start(self) -> None:
        await self.channel.consume("amq.rabbitmq.reply-to", self.on_reply, no_ack=True)

    def on_reply(self, message: hutch.IncomingMessage) -> None:
        future = self.pending.pop(message.correlation_id or "", None)
        if future is not None:
            future.set_result(json.loads(message.body))

    async def call(self, routing_key: str, kwargs: dict[str, Any]) -> Any:
        self.ids += 1
        cid = str(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[cid] = future
        message = hutch.Message(
            json.dumps(kwargs).encode(),
            content_type="application/json",
            correlation_id=cid,
            reply_to="amq.rabbitmq.reply-to",
            type="call",
        )
        self.channel.publish_nowait(message, routing_key, mandatory=True)
        return await future


async def _rpc_case(
    url: str, name: str, caller: str, callee: str, count: int, profiler: cProfile.Profile | None
) -> dict[str, float]:
    from hutch.patterns import RPC

    routing_key = name if callee == "pattern" else CALLEE_BARE + name
    async with await hutch.connect_robust(url) as connection:
        channel = await connection.channel()
        if caller == "pattern":
            rpc = await RPC.create(channel)

            async def call(i: int) -> Any:
                return await rpc.call(routing_key, {"x": i, "y": 2})

        else:
            bare = BareCaller(channel)
            await bare.start()

            async def call(i: int) -> Any:
                return await bare.call(routing_key, {"x": i, "y": 2})

        for i in range(WARMUP):
            assert await call(i) == i * 2
        latencies = []
        clock = time.perf_counter
        if profiler is not None:
            profiler.enable()
        cpu0 = time.process_time()
        start = clock()
        for i in range(count):
            t0 = clock()
            await call(i)
            latencies.append(clock() - t0)
        seconds = clock() - start
        cpu = time.process_time() - cpu0
        if profiler is not None:
            profiler.disable()
    latencies.sort()
    return {
        "rate": count / seconds,
        "p50": latencies[len(latencies) // 2] * 1e3,
        "p99": latencies[int(len(latencies) * 0.99)] * 1e3,
        "caller_us": cpu / count * 1e6,
    }


async def _e2e_case(
    url: str, name: str, producer: str, worker: str, count: int, profiler: cProfile.Profile | None
) -> dict[str, float]:
    from hutch.patterns import Master

    queue = name + WORKER if worker == "pattern" else CALLEE_BARE + name + WORKER
    async with await hutch.connect_robust(url) as connection:
        channel = await connection.channel()
        master = Master(channel)
        if profiler is not None:
            profiler.enable()
        start, cpu0 = time.perf_counter(), time.process_time()
        if producer == "pattern":
            for i in range(count):
                await master.create_task(queue, {"i": i})
        else:
            for i in range(count):
                message = hutch.Message(
                    json.dumps({"i": i}).encode(),
                    content_type="application/json",
                    delivery_mode=hutch.DeliveryMode.PERSISTENT,
                )
                await channel.publish(message, queue, mandatory=True)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        if profiler is not None:
            profiler.disable()
    return {"rate": count / seconds, "producer_us": cpu / count * 1e6}


async def _tasks_case(
    url: str, form: str, count: int, profiler: cProfile.Profile | None
) -> dict[str, float]:
    from hutch.patterns import Master

    queue = f"profile.tasks.{os.urandom(4).hex()}"
    async with await hutch.connect(url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(queue, auto_delete=True)
        if profiler is not None:
            profiler.enable()
        start, cpu0 = time.perf_counter(), time.process_time()
        if form == "pattern create_task":
            master = Master(channel)
            for i in range(count):
                await master.create_task(queue, {"i": i})
        elif form == "bare publish":
            for i in range(count):
                message = hutch.Message(
                    json.dumps({"i": i}).encode(),
                    content_type="application/json",
                    delivery_mode=hutch.DeliveryMode.PERSISTENT,
                )
                await channel.publish(message, queue, mandatory=True)
        else:
            done = asyncio.get_running_loop().create_future()
            left = count
            for i in range(count):
                message = hutch.Message(
                    json.dumps({"i": i}).encode(),
                    content_type="application/json",
                    delivery_mode=hutch.DeliveryMode.PERSISTENT,
                )
                channel.publish_nowait(message, queue)
            await channel.queue_declare(queue, passive=True)
            if profiler is not None:
                profiler.disable()
            start, cpu0 = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.enable()
            if form == "pattern worker":

                async def task(*, i: int) -> None:
                    nonlocal left
                    left -= 1
                    if not left:
                        done.set_result(None)

                worker = await Master(channel).create_worker(queue, task, auto_delete=True)
                await done
            else:
                consumer = await connection.channel()
                await consumer.set_qos(64)

                async def on_message(message: hutch.IncomingMessage) -> None:
                    nonlocal left
                    json.loads(message.body)
                    await message.ack()
                    left -= 1
                    if not left:
                        done.set_result(None)

                await consumer.consume(queue, on_message)
                await done
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        if profiler is not None:
            profiler.disable()
        if form == "pattern worker":
            await worker.close()
            for name in (*worker.retry_queues, worker.dead_letter_queue):
                await channel.queue_delete(name)
        await channel.queue_delete(queue)
    return {"rate": count / seconds, "cpu_us": cpu / count * 1e6}


def _top(profile: pstats.Stats | None, title: str, top: int) -> None:
    if profile is None:
        return
    out = io.StringIO()
    profile.stream = out  # type: ignore[attr-defined]
    profile.sort_stats("tottime").print_stats(top)
    print(f"\n== {title}: top {top} by own time ==")
    print("\n".join(out.getvalue().splitlines()[6:]))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["rpc", "e2e", "tasks"])
    parser.add_argument("--node", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--loop", choices=harness.LOOPS, default="asyncio")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--callee", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.callee:
        url, name, profile_path = args.callee
        with asyncio.Runner(loop_factory=harness.new_loop_factory(args.loop)) as runner:
            runner.run(_callee(url, name, "" if profile_path == "-" else profile_path))
        return 0

    def run(coro: Any) -> dict[str, float]:
        with asyncio.Runner(loop_factory=harness.new_loop_factory(args.loop)) as runner:
            result: dict[str, float] = runner.run(coro)
            return result

    results: dict[str, list[dict[str, float]]] = {}
    caller_profile = cProfile.Profile() if args.profile else None
    callee_stats: pstats.Stats | None = None
    with harness.private_node(args.node) as node:
        if args.what in ("rpc", "e2e"):
            name = f"profile.rpc.{os.urandom(4).hex()}"
            profile_path = tempfile.mktemp(suffix=".prof") if args.profile else "-"
            callee = harness.Peer(
                __file__, "--loop", args.loop, "rpc", "--callee", node.url, name, profile_path
            )
            callee.start()
            pairs = [(a, b) for a in ("pattern", "bare") for b in ("pattern", "bare")]
            try:
                for round_ in range(args.rounds):
                    for caller, side in pairs[round_ % 4 :] + pairs[: round_ % 4]:
                        profiler = caller_profile if caller == "pattern" else None
                        callee_cpu = callee.cpu_seconds()
                        if args.what == "rpc":
                            case = _rpc_case(node.url, name, caller, side, args.count, profiler)
                            result = run(case)
                            # includes the callee's share of the warm-up calls
                            result["callee_us"] = (
                                (callee.cpu_seconds() - callee_cpu) / (args.count + WARMUP) * 1e6
                            )
                            key = f"{caller} caller / {side} callee"
                        else:
                            case = _e2e_case(node.url, name, caller, side, args.count, profiler)
                            result = run(case)
                            result["worker_us"] = (
                                (callee.cpu_seconds() - callee_cpu) / args.count * 1e6
                            )
                            key = f"{caller} producer / {side} worker"
                        results.setdefault(key, []).append(result)
                        print(f"  {round_ + 1} {key:<30} {result}", file=sys.stderr)
            finally:
                callee.stop()
            if args.profile:
                callee_stats = pstats.Stats(profile_path)
                os.unlink(profile_path)
        else:
            forms = ["pattern create_task", "bare publish", "pattern worker", "bare consumer"]
            for round_ in range(args.rounds):
                for form in forms[round_ % 4 :] + forms[: round_ % 4]:
                    profiler = caller_profile if form.startswith("pattern") else None
                    result = run(_tasks_case(node.url, form, args.count, profiler))
                    results.setdefault(form, []).append(result)
                    print(f"  {round_ + 1} {form:<30} {result}", file=sys.stderr)
    print(f"\nmedians of {args.rounds} rounds, {args.count} per case, {args.loop}:")
    for key, values in results.items():
        shown = "  ".join(f"{k} {statistics.median(v[k] for v in values):,.2f}" for k in values[0])
        print(f"  {key:<30} {shown}")
    if caller_profile is not None:
        _top(pstats.Stats(caller_profile), "pattern side, this process", args.top)
    _top(callee_stats, "pattern callee process (all calls it served)", args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
