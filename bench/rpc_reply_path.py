"""RPC reply path: RabbitMQ's direct reply-to against an exclusive reply queue, side by side.

Run (about a minute; starts and removes its own node)::

    .venv/bin/python bench/rpc_reply_path.py

Options: ``--rounds N`` (default 5), ``--loop asyncio|uvloop`` (default asyncio), ``--calls N``
(one-by-one calls per case, default 2000; the 100-in-flight case makes 5x as many),
``--node DIR`` (a node already started with ``python scripts/rabbitmq_node.py start DIR``).

The callee is a hutch RPC in another process (``concurrency=128``, an ``async def`` multiply),
started once and shared by every case. Each case runs in a fresh event loop on a fresh
connection: ``RPC.create(channel, reply_path=...)``, 200 warm-up calls, then the measured calls.
Rounds interleave the two reply paths, alternating which goes first. Reported: medians over the
rounds of calls/s, latency p50/p99 (one by one), this process's CPU per call, the broker's CPU per
call (its VM, from /proc) and how long ``RPC.create`` takes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import harness

METHOD = "bench.rpc.multiply"
IN_FLIGHT = 100
PATHS = ("direct", "queue")


# -- the callee process ---------------------------------------------------------------------


async def _callee(url: str) -> None:
    import hutch
    from hutch.patterns import RPC

    async def multiply(*, x: int, y: int) -> int:
        return x * y

    async with await hutch.connect(url) as connection:
        rpc = await RPC.create(await connection.channel(), concurrency=128)
        await rpc.register(METHOD, multiply, auto_delete=True)
        print("ready", flush=True)
        # Exit when the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await rpc.close()


# -- the caller cases -----------------------------------------------------------------------


async def _one_by_one(node: harness.Node, path: str, calls: int) -> dict[str, float]:
    import hutch
    from hutch.patterns import RPC

    async with await hutch.connect(node.url) as connection:
        channel = await connection.channel()
        t0 = time.perf_counter()
        rpc = await RPC.create(channel, reply_path=path)
        create_ms = (time.perf_counter() - t0) * 1e3
        for i in range(200):
            await rpc.call(METHOD, {"x": i, "y": 2})
        latencies = []
        clock = time.perf_counter
        broker0, cpu0, start = node.cpu_seconds(), time.process_time(), clock()
        for i in range(calls):
            t0 = clock()
            await rpc.call(METHOD, {"x": i, "y": 2})
            latencies.append(clock() - t0)
        seconds, cpu = clock() - start, time.process_time() - cpu0
        broker = node.cpu_seconds() - broker0
        await rpc.close()
    latencies.sort()
    return {
        "rate": calls / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "cpu_us": cpu / calls * 1e6,
        "broker_us": broker / calls * 1e6,
        "create_ms": create_ms,
    }


async def _in_flight(node: harness.Node, path: str, calls: int) -> dict[str, float]:
    import hutch
    from hutch.patterns import RPC

    async with await hutch.connect(node.url) as connection:
        rpc = await RPC.create(await connection.channel(), reply_path=path)
        for i in range(200):
            await rpc.call(METHOD, {"x": i, "y": 2})
        each = calls // IN_FLIGHT

        async def worker(w: int) -> None:
            for i in range(each):
                await rpc.call(METHOD, {"x": i, "y": w})

        broker0, cpu0, start = node.cpu_seconds(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(IN_FLIGHT)))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
        broker = node.cpu_seconds() - broker0
        await rpc.close()
    total = each * IN_FLIGHT
    return {
        "rate": total / seconds,
        "cpu_us": cpu / total * 1e6,
        "broker_us": broker / total * 1e6,
    }


def _run(loop: str, coro_factory: object) -> dict[str, float]:
    with asyncio.Runner(loop_factory=harness.new_loop_factory(loop)) as runner:
        return runner.run(coro_factory())  # type: ignore[operator,no-any-return]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", choices=harness.LOOPS, default="asyncio")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--node", type=Path)
    parser.add_argument("--callee", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.callee:
        asyncio.run(_callee(args.callee))
        return 0

    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with harness.private_node(args.node) as node:
        callee = harness.Peer(__file__, "--callee", node.url)
        callee.start()
        try:
            for round_ in range(args.rounds):
                order = PATHS if round_ % 2 == 0 else PATHS[::-1]
                for case, count, func in (
                    ("one by one", args.calls, _one_by_one),
                    (f"{IN_FLIGHT} in flight", args.calls * 5, _in_flight),
                ):
                    for path in order:
                        result = _run(
                            args.loop,
                            lambda f=func, p=path, n=count: f(node, p, n),  # type: ignore[misc]
                        )
                        results.setdefault((case, path), []).append(result)
                        shown = "  ".join(f"{k} {v:,.2f}" for k, v in result.items())
                        print(f"  round {round_ + 1} {case:<14} {path:<6} {shown}", file=sys.stderr)
        finally:
            callee.stop()
        version = harness.rabbitmq_version(node)

    print(
        f"\nRPC reply path, RabbitMQ {version}, loop {args.loop}, median of {args.rounds} "
        f"rounds, callee in another process\n"
    )
    print(
        "| case | reply path | calls/s | p50 ms | p99 ms | caller CPU µs/call "
        "| broker CPU µs/call | RPC.create ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (case, path), rows in results.items():

        def med(key: str, rows: list[dict[str, float]] = rows) -> str:
            values = [r[key] for r in rows if key in r]
            return f"{statistics.median(values):,.2f}" if values else "-"

        rate = statistics.median(r["rate"] for r in rows)
        print(
            f"| {case} | {path} | {rate:,.0f} | {med('p50_ms')} | {med('p99_ms')} "
            f"| {med('cpu_us')} | {med('broker_us')} | {med('create_ms')} |"
        )
    print("\nPaired per round, direct ÷ queue (median, min-max over rounds):\n")
    for case in dict.fromkeys(case for case, _path in results):
        direct, queue = results[(case, "direct")], results[(case, "queue")]
        for key in ("rate", "p50_ms", "broker_us"):
            ratios = sorted(d[key] / q[key] for d, q in zip(direct, queue, strict=True) if key in d)
            if ratios:
                print(
                    f"- {case}, {key}: {statistics.median(ratios):.2f} "
                    f"({ratios[0]:.2f}-{ratios[-1]:.2f})"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
