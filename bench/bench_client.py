"""hutch's AMQP client against aiormq, side by side, against one private RabbitMQ node.

Run (about 3½ minutes; starts and removes its own node)::

    .venv/bin/python bench/bench_client.py

Options: ``--rounds N`` (default 7), ``--loop asyncio|uvloop|both`` (default both),
``--scale F`` (message counts x F), ``--node DIR`` (use a node already started with
``python scripts/rabbitmq_node.py start DIR``), ``--clients hutch,aiormq,raw``, ``--scenarios``
(comma-separated prefixes), ``--out NAME`` (docs/NAME.json and docs/NAME.png),
``--redraw`` (table and chart from the saved JSON, no broker).

Scenarios (32-byte bodies, no properties, a classic non-durable queue, transient messages):

- ``publish pipelined``: publisher confirms, a window of 1000 unconfirmed messages. hutch uses
  ``publish_nowait`` futures; aiormq a task per ``basic_publish``, as its API asks.
- ``publish one by one``: ``await publish(...)`` in a loop; a broker round trip each.
- ``consume + ack``: a queue filled beforehand, prefetch 1000, an ``async def`` callback that
  awaits ``ack()`` per message (both clients run such a callback as a task per delivery).
- ``consume + ack (sync cb)``: hutch only, a plain ``def`` callback that calls
  ``message.ack()`` without a task.

``raw`` is ``raw_client.py``, the least a Python client can do (publish scenarios only): the
floor hutch is compared with.

Client CPU is this process's CPU time; broker CPU is the node VM's, from /proc; both are read
after a final round trip that makes sure the broker has processed every frame of the case.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
from pathlib import Path

from pamqp import commands as spec

import harness

ROOT = Path(__file__).resolve().parents[1]
BODY = b"x" * 32
WINDOW = 1000
PREFETCH = 1000

SCENARIOS = [
    harness.ScenarioSpec("publish pipelined", 50000, goal=8),
    harness.ScenarioSpec("publish one by one", 3000),
    harness.ScenarioSpec("consume + ack", 50000, goal=4),
    harness.ScenarioSpec("consume + ack (sync cb)", 50000),
]


# -- hutch --------------------------------------------------------------------------------------


async def _hutch_fill(url: str, queue: str, count: int) -> None:
    import hutch

    async with await hutch.connect(url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(queue)
        await _hutch_pipelined(channel, queue, count)


async def _hutch_pipelined(channel: object, queue: str, count: int) -> None:
    import hutch

    assert isinstance(channel, hutch.amqp.Channel)
    window: collections.deque[asyncio.Future[None]] = collections.deque()
    message = hutch.Message(BODY)
    publish = channel.publish_nowait
    for _ in range(count):
        if len(window) >= WINDOW:
            await window.popleft()
        window.append(publish(message, queue))
    for future in window:
        await future


async def hutch_publish_pipelined(ctx: harness.Context) -> None:
    import hutch

    async with await hutch.connect(ctx.url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(ctx.queue)
        async with ctx.measure() as m:
            await _hutch_pipelined(channel, ctx.queue, ctx.count)
            m.stop_clock()
            await channel.queue_declare(ctx.queue, passive=True)
        await channel.queue_delete(ctx.queue)


async def hutch_publish_one_by_one(ctx: harness.Context) -> None:
    import hutch

    async with await hutch.connect(ctx.url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(ctx.queue)
        message = hutch.Message(BODY)
        async with ctx.measure() as m:
            for _ in range(ctx.count):
                await channel.publish(message, ctx.queue)
            m.stop_clock()
            await channel.queue_declare(ctx.queue, passive=True)
        await channel.queue_delete(ctx.queue)


async def _hutch_consume(ctx: harness.Context, sync: bool) -> None:
    import hutch

    await _hutch_fill(ctx.url, ctx.queue, ctx.count)
    async with await hutch.connect(ctx.url) as connection:
        channel = await connection.channel()
        await channel.set_qos(PREFETCH)
        done, on_message = harness.acking_consumer(ctx.count, sync=sync)
        async with ctx.measure() as m:
            tag = await channel.consume(ctx.queue, on_message)
            await done
            m.stop_clock()
            await channel.cancel(tag)
            info = await channel.queue_declare(ctx.queue, passive=True)
        assert info.message_count == 0, info
        await channel.queue_delete(ctx.queue)


async def hutch_consume(ctx: harness.Context) -> None:
    await _hutch_consume(ctx, sync=False)


async def hutch_consume_sync(ctx: harness.Context) -> None:
    await _hutch_consume(ctx, sync=True)


# -- aiormq -------------------------------------------------------------------------------------


async def aiormq_publish_pipelined(ctx: harness.Context) -> None:
    import aiormq

    connection = await aiormq.connect(ctx.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.queue_declare(ctx.queue)
        window: collections.deque[asyncio.Task[object]] = collections.deque()
        create_task = asyncio.get_running_loop().create_task
        publish = channel.basic_publish
        async with ctx.measure() as m:
            for _ in range(ctx.count):
                if len(window) >= WINDOW:
                    await window.popleft()
                window.append(create_task(publish(BODY, routing_key=ctx.queue)))
            for task in window:
                await task
            m.stop_clock()
            await channel.queue_declare(ctx.queue, passive=True)
        await channel.queue_delete(ctx.queue)
    finally:
        await connection.close()


async def aiormq_publish_one_by_one(ctx: harness.Context) -> None:
    import aiormq

    connection = await aiormq.connect(ctx.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.queue_declare(ctx.queue)
        async with ctx.measure() as m:
            for _ in range(ctx.count):
                await channel.basic_publish(BODY, routing_key=ctx.queue)
            m.stop_clock()
            await channel.queue_declare(ctx.queue, passive=True)
        await channel.queue_delete(ctx.queue)
    finally:
        await connection.close()


async def aiormq_consume(ctx: harness.Context) -> None:
    import aiormq

    await _hutch_fill(ctx.url, ctx.queue, ctx.count)
    connection = await aiormq.connect(ctx.url)
    try:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=PREFETCH)
        done = asyncio.get_running_loop().create_future()
        left = ctx.count

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal left
            await channel.basic_ack(message.delivery_tag)  # type: ignore[arg-type]
            left -= 1
            if not left:
                done.set_result(None)

        async with ctx.measure() as m:
            ok = await channel.basic_consume(ctx.queue, on_message)
            await done
            m.stop_clock()
            await channel.basic_cancel(ok.consumer_tag)  # type: ignore[arg-type]
            info = await channel.queue_declare(ctx.queue, passive=True)
        assert info.message_count == 0, info
        await channel.queue_delete(ctx.queue)
    finally:
        await connection.close()


# -- the floor: raw_client.py --------------------------------------------------------------------


async def raw_publish_pipelined(ctx: harness.Context) -> None:
    from raw_client import RawClient

    client = await RawClient.connect(ctx.url)
    try:
        await client.rpc(spec.Queue.Declare(queue=ctx.queue))
        data = client.publish_frames(ctx.queue, BODY)
        window: collections.deque[asyncio.Future[None]] = collections.deque()
        async with ctx.measure() as m:
            for _ in range(ctx.count):
                if len(window) >= WINDOW:
                    await window.popleft()
                window.append(client.publish(data))
            for future in window:
                await future
            m.stop_clock()
            await client.rpc(spec.Queue.Declare(queue=ctx.queue, passive=True))
        await client.rpc(spec.Queue.Delete(queue=ctx.queue))
    finally:
        client.close()


async def raw_publish_one_by_one(ctx: harness.Context) -> None:
    from raw_client import RawClient

    client = await RawClient.connect(ctx.url)
    try:
        await client.rpc(spec.Queue.Declare(queue=ctx.queue))
        data = client.publish_frames(ctx.queue, BODY)
        async with ctx.measure() as m:
            for _ in range(ctx.count):
                await client.publish(data)
            m.stop_clock()
            await client.rpc(spec.Queue.Declare(queue=ctx.queue, passive=True))
        await client.rpc(spec.Queue.Delete(queue=ctx.queue))
    finally:
        client.close()


CLIENTS: dict[str, dict[str, harness.Scenario]] = {
    "hutch": {
        "publish pipelined": hutch_publish_pipelined,
        "publish one by one": hutch_publish_one_by_one,
        "consume + ack": hutch_consume,
        "consume + ack (sync cb)": hutch_consume_sync,
    },
    "aiormq": {
        "publish pipelined": aiormq_publish_pipelined,
        "publish one by one": aiormq_publish_one_by_one,
        "consume + ack": aiormq_consume,
    },
    "raw": {
        "publish pipelined": raw_publish_pipelined,
        "publish one by one": raw_publish_one_by_one,
    },
}


def report(samples: list[harness.Sample], info: dict[str, object], out: str) -> None:
    rows = harness.summarize(samples, SCENARIOS, "hutch", "aiormq")
    print()
    clients = [c for c in CLIENTS if any(s.client == c for s in samples)]
    print(harness.table(rows, "hutch", "aiormq", clients))
    print()
    floor = [s for s in samples if s.client in ("hutch", "raw")]
    floor_rows = [r for r in harness.summarize(floor, SCENARIOS, "hutch", "raw") if r.ratios]
    if floor_rows:
        print("hutch against the floor (raw_client.py), paired per round:")
        for row in floor_rows:
            extra = harness._median(row.client_us["hutch"]) - harness._median(row.client_us["raw"])
            print(
                f"  {row.scenario:<20} {row.loop:<7} rate {harness._median(row.ratios):.2f}x "
                f"({min(row.ratios):.2f}-{max(row.ratios):.2f}), client CPU {extra:+.1f} µs/msg"
            )
        print()
    if {"asyncio", "uvloop"} <= {s.loop for s in samples}:
        print("uvloop over asyncio (ratio of medians):")
        for spec in SCENARIOS:
            for client in CLIENTS:
                rates = {
                    loop: [
                        s.rate
                        for s in samples
                        if s.scenario == spec.name and s.client == client and s.loop == loop
                    ]
                    for loop in ("asyncio", "uvloop")
                }
                if rates["asyncio"] and rates["uvloop"]:
                    gain = harness._median(rates["uvloop"]) / harness._median(rates["asyncio"])
                    print(f"  {spec.name:<24} {client:<7} {gain:.2f}x")
    print()
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    harness.chart(
        ROOT / "docs" / f"{out}.png",
        rows,
        "hutch vs aiormq (and a bare minimal client, 'raw') on one RabbitMQ node; "
        "median of rounds, whiskers min-max",
    )
    print(f"chart: docs/{out}.png, samples: docs/{out}.json", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--node", type=Path, default=None)
    parser.add_argument("--clients", default="hutch,aiormq,raw")
    parser.add_argument("--scenarios", default="")
    parser.add_argument("--out", default="bench_client")
    parser.add_argument("--redraw", action="store_true")
    parser.add_argument("--no-warmup", action="store_true")
    args = parser.parse_args()
    json_path = ROOT / "docs" / f"{args.out}.json"
    if args.redraw:
        samples, saved = harness.load_samples(json_path)
        report(samples, saved["info"], args.out)
        return
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    clients = {name: CLIENTS[name] for name in args.clients.split(",")}
    scenarios = [
        s
        for s in SCENARIOS
        if not args.scenarios or any(s.name.startswith(p) for p in args.scenarios.split(","))
    ]
    with harness.private_node(args.node) as node:
        info: dict[str, object] = {**harness.machine(), "rabbitmq": harness.rabbitmq_version(node)}
        suite = harness.Suite(node, scenarios, clients, loops, args.rounds, args.scale)
        samples = suite.run(warmup=not args.no_warmup)
    info["rounds"] = args.rounds
    info["scale"] = args.scale
    harness.save_json(json_path, samples, {"info": info})
    report(samples, info, args.out)


if __name__ == "__main__":
    main()
