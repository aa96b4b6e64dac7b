"""hutch's Master/Worker and RPC patterns against aio-pika's, side by side, on one RabbitMQ node.

Run (about 3½ minutes on 2 busy cores; starts and removes its own node)::

    .venv/bin/python bench/bench_patterns.py

Options: ``--rounds N`` (default 5), ``--loop asyncio|uvloop|both`` (default both),
``--scale F`` (multiplies the counts), ``--node DIR`` (a node already started with
``python scripts/rabbitmq_node.py start DIR``), ``--clients hutch,aio-pika``, ``--scenarios``
(comma-separated prefixes), ``--out NAME`` (docs/NAME.json and docs/NAME.png), ``--redraw``
(table and chart from the saved JSON, no broker), ``--no-warmup``.

Both sides are used as the seed's programs use them: ``connect_robust``, ``connection.channel()``
(publisher confirms on), ``Master``/``RPC`` (aio-pika: ``JsonMaster``/``JsonRPC``), workers and
callees registered with ``auto_delete=True``, every other option at its default. So hutch's worker
has a prefetch of 64 and its callee a concurrency of 32, while aio-pika's worker and callee set no
prefetch at all (unbounded): that is what each library's users get. A task is ``{"i": n}``
(persistent, JSON); a call is ``multiply(x=n, y=2)``; handlers are trivial ``async def``.

The worker or callee runs in another process (a ``harness.Peer``), one per client and event loop,
kept for the whole run and told over its stdin what to serve for each case; its CPU counts as the
client's. Scenarios:

- ``tasks one by one``: ``await master.proxy.<queue>(i=n)`` in a loop, until the worker has run the
  last task (end to end, worker already consuming).
- ``tasks/gather``: ``asyncio.gather`` of every ``create_task`` at once, until the worker ran them.
- ``tasks/batch``: hutch's ``create_tasks(queue, [...])`` (aio-pika has no batch form; the goal
  compares it with aio-pika's ``tasks one by one``).
- ``enqueue/gather`` and ``enqueue/batch``: the same two forms with no worker (queue pre-declared).
- ``drain``: a worker started on a queue filled beforehand, until it ran every task (its start —
  channel, qos, declarations, consume — is inside the measurement, as in ``bench_client.py``).
- ``rpc one by one``: ``await rpc.proxy.<name>(x=n, y=2)`` in a loop (calls/s, p50, p99).
- ``rpc 100 in flight``: 100 coroutines each calling one by one.

A third client, ``floor`` (``floor_client.py``), runs the two one-by-one scenarios only: the same
messages on the wire as hutch's (a confirmed persistent task; a call with direct reply-to and an
expiration, replied to and acked in one write), from hand-packed frames with nothing else. Its
ratios to aio-pika are what a client that costs nothing would reach on the day, so they show how
far a goal set as a ratio of round trips is within reach at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parents[1]
IN_FLIGHT = 100
RPC_WARMUP = 50
CLIENTS = ("hutch", "aio-pika", "floor")
FLOOR_SCENARIOS = {"tasks one by one", "rpc one by one"}

SCENARIOS = [
    harness.ScenarioSpec("tasks one by one", 2000, goal=2),
    harness.ScenarioSpec("tasks/gather", 10000),
    harness.ScenarioSpec("tasks/batch", 10000, note="hutch only"),
    harness.ScenarioSpec("enqueue/gather", 10000),
    harness.ScenarioSpec("enqueue/batch", 20000, note="hutch only"),
    harness.ScenarioSpec("drain", 20000, goal=4),
    harness.ScenarioSpec("rpc one by one", 2000),
    harness.ScenarioSpec("rpc 100 in flight", 5000, goal=6),
]

# (scenario, client, loop, round) -> latency percentiles in ms, for the RPC one-by-one cases
LATENCIES: dict[str, dict[str, float]] = {}


def _key(scenario: str, client: str, loop: str, round_: int) -> str:
    return f"{scenario}|{client}|{loop}|{round_}"


# -- the two clients behind one face ----------------------------------------------------------


class Api:
    """What the scenarios need from a client library, so they run the same code for both."""

    name = ""

    async def connect(self, url: str) -> Any:
        raise NotImplementedError

    def master(self, channel: Any) -> Any:
        raise NotImplementedError

    async def rpc(self, channel: Any) -> Any:
        raise NotImplementedError

    async def serve_tasks(
        self, channel: Any, queue: str, handler: Any
    ) -> Callable[[], Awaitable[None]]:
        """Start a worker; return how to stop it and clean up after it."""
        raise NotImplementedError


class HutchApi(Api):
    name = "hutch"

    async def connect(self, url: str) -> Any:
        import hutch

        return await hutch.connect_robust(url)

    def master(self, channel: Any) -> Any:
        from hutch.patterns import Master

        return Master(channel)

    async def rpc(self, channel: Any) -> Any:
        from hutch.patterns import RPC

        return await RPC.create(channel)

    async def serve_tasks(
        self, channel: Any, queue: str, handler: Any
    ) -> Callable[[], Awaitable[None]]:
        worker = await self.master(channel).create_worker(queue, handler, auto_delete=True)

        async def stop() -> None:
            await worker.close()
            # the retry and dead-letter queues outlive a worker by design: not across cases
            for name in (*worker.retry_queues, worker.dead_letter_queue):
                await channel.queue_delete(name)

        return stop


class AioPikaApi(Api):
    name = "aio-pika"

    async def connect(self, url: str) -> Any:
        import aio_pika

        return await aio_pika.connect_robust(url)

    def master(self, channel: Any) -> Any:
        from aio_pika.patterns import JsonMaster

        return JsonMaster(channel)

    async def rpc(self, channel: Any) -> Any:
        from aio_pika.patterns import JsonRPC

        return await JsonRPC.create(channel)

    async def serve_tasks(
        self, channel: Any, queue: str, handler: Any
    ) -> Callable[[], Awaitable[None]]:
        worker = await self.master(channel).create_worker(queue, handler, auto_delete=True)

        async def stop() -> None:
            await worker.close()

        return stop


class _FloorSession:
    """The floor's stand-in for a connection: each ``channel()`` is a connection of its own
    with publisher confirms (the floor client has one channel per connection)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.channels: list[Any] = []

    async def channel(self) -> Any:
        import floor_client

        self.channels.append(await floor_client.connect(self.url, confirms=True))
        return self.channels[-1]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class FloorApi(Api):
    name = "floor"

    async def connect(self, url: str) -> Any:
        return _FloorSession(url)

    def master(self, channel: Any) -> Any:
        import floor_client

        return floor_client.FloorMaster(channel)

    async def rpc(self, channel: Any) -> Any:
        import floor_client

        # hutch's calls carry its default timeout as their expiration
        return await floor_client.FloorRPC.create(channel.url, expiration_ms=60_000)

    async def serve_tasks(
        self, channel: Any, queue: str, handler: Any
    ) -> Callable[[], Awaitable[None]]:
        import floor_client

        worker = await floor_client.serve_tasks(channel.url, queue, handler, prefetch=64)

        async def stop() -> None:
            await worker.close()

        return stop


APIS: dict[str, Api] = {"hutch": HutchApi(), "aio-pika": AioPikaApi(), "floor": FloorApi()}


# -- the peer process: a worker or callee, told what to serve over stdin ----------------------


def _say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


async def _serve_worker(api: Api, channel: Any, queue: str, count: int) -> None:
    """Run a worker on ``queue``; say ``ready`` once it consumes, ``done`` after ``count``
    tasks."""
    done = asyncio.get_running_loop().create_future()
    left = count

    async def task(*, i: int) -> None:
        nonlocal left
        left -= 1
        if not left:
            done.set_result(None)

    stop = await api.serve_tasks(channel, queue, task)
    _say("ready")
    await done
    _say("done")
    await stop()


async def _peer_main(client: str, url: str) -> None:
    api = APIS[client]
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[list[str] | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.split())
        loop.call_soon_threadsafe(commands.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    connection = await api.connect(url)
    _say("ready")
    try:
        while (command := await commands.get()) is not None:
            channel = await connection.channel()
            if command[0] == "worker":
                await _serve_worker(api, channel, command[1], int(command[2]))
            elif command[0] == "callee":

                async def multiply(*, x: int, y: int) -> int:
                    return x * y

                rpc = await api.rpc(channel)
                await rpc.register(command[1], multiply, auto_delete=True)
                _say("ready")
                stop_command = await commands.get()
                assert stop_command == ["stop"], stop_command
                await rpc.close()
            else:
                raise SystemExit(f"peer: unknown command {command!r}")
            await channel.close()
            _say("idle")
    finally:
        await connection.close()


class Resident(harness.Peer):
    """A peer kept for the whole run (one per client and loop): the harness's ``stop()`` after
    each case leaves it running; ``shutdown()`` ends it."""

    def stop(self) -> None:
        pass

    def shutdown(self) -> None:
        super().stop()

    def send(self, line: str) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _expect(self, word: str) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != word:
            raise RuntimeError(f"peer {self.args[-3:]} said {line!r}, expected {word!r}")

    async def expect(self, word: str) -> None:
        """Wait (without blocking the loop) for the peer's next line to be ``word``."""
        await asyncio.get_running_loop().run_in_executor(None, self._expect, word)


_residents: dict[tuple[str, str], Resident] = {}


def _resident(ctx: harness.Context) -> Resident:
    peer = _residents.get((ctx.client, ctx.loop))
    if peer is None:
        peer = Resident(__file__, "--peer", ctx.client, ctx.loop, ctx.url)
        peer.start()
        _residents[(ctx.client, ctx.loop)] = peer
    ctx.peers.append(peer)
    return peer


# -- helpers that are not measured (always hutch's client) -------------------------------------


async def _fill(url: str, queue: str, count: int) -> None:
    """Fill ``queue`` (declared as a worker declares it) with ``count`` JSON tasks."""
    import hutch

    async with await hutch.connect(url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(queue, auto_delete=True)
        futures = []
        for i in range(count):
            message = hutch.Message(
                json.dumps({"i": i}).encode(),
                content_type="application/json",
                delivery_mode=hutch.DeliveryMode.PERSISTENT,
            )
            futures.append(channel.publish_nowait(message, queue))
            if len(futures) >= 1000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)


async def _declare(url: str, queue: str) -> None:
    import hutch

    async with await hutch.connect(url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(queue, auto_delete=True)


async def _count_and_delete(url: str, queue: str) -> int:
    import hutch

    async with await hutch.connect(url) as connection:
        channel = await connection.channel()
        info = await channel.queue_declare(queue, passive=True)
        await channel.queue_delete(queue)
        return int(info.message_count)


# -- Master/Worker scenarios ---------------------------------------------------------------------


async def _end_to_end(ctx: harness.Context, produce: Callable[[Any], Awaitable[None]]) -> None:
    api = APIS[ctx.client]
    peer = _resident(ctx)
    peer.send(f"worker {ctx.queue} {ctx.count}")
    await peer.expect("ready")
    connection = await api.connect(ctx.url)
    try:
        master = api.master(await connection.channel())
        async with ctx.measure():
            await produce(master)
            await peer.expect("done")
        await peer.expect("idle")
    finally:
        await connection.close()


async def tasks_one_by_one(ctx: harness.Context) -> None:
    async def produce(master: Any) -> None:
        send = getattr(master.proxy, ctx.queue)
        for i in range(ctx.count):
            await send(i=i)

    await _end_to_end(ctx, produce)


async def tasks_gather(ctx: harness.Context) -> None:
    async def produce(master: Any) -> None:
        create = master.create_task
        queue = ctx.queue
        await asyncio.gather(*(create(queue, {"i": i}) for i in range(ctx.count)))

    await _end_to_end(ctx, produce)


async def tasks_batch(ctx: harness.Context) -> None:
    tasks = [{"i": i} for i in range(ctx.count)]

    async def produce(master: Any) -> None:
        await master.create_tasks(ctx.queue, tasks)

    await _end_to_end(ctx, produce)


async def _enqueue(ctx: harness.Context, produce: Callable[[Any], Awaitable[None]]) -> None:
    api = APIS[ctx.client]
    await _declare(ctx.url, ctx.queue)
    connection = await api.connect(ctx.url)
    try:
        master = api.master(await connection.channel())
        async with ctx.measure():
            await produce(master)
    finally:
        await connection.close()
    left = await _count_and_delete(ctx.url, ctx.queue)
    assert left == ctx.count, f"{left} of {ctx.count} tasks in the queue"


async def enqueue_gather(ctx: harness.Context) -> None:
    async def produce(master: Any) -> None:
        create = master.create_task
        queue = ctx.queue
        await asyncio.gather(*(create(queue, {"i": i}) for i in range(ctx.count)))

    await _enqueue(ctx, produce)


async def enqueue_batch(ctx: harness.Context) -> None:
    tasks = [{"i": i} for i in range(ctx.count)]

    async def produce(master: Any) -> None:
        await master.create_tasks(ctx.queue, tasks)

    await _enqueue(ctx, produce)


async def drain(ctx: harness.Context) -> None:
    peer = _resident(ctx)
    await _fill(ctx.url, ctx.queue, ctx.count)
    async with ctx.measure():
        peer.send(f"worker {ctx.queue} {ctx.count}")
        await peer.expect("ready")
        await peer.expect("done")
    await peer.expect("idle")


# -- RPC scenarios -----------------------------------------------------------------------------


async def _rpc_case(ctx: harness.Context, calls: Callable[[Any], Awaitable[None]]) -> None:
    api = APIS[ctx.client]
    peer = _resident(ctx)
    peer.send(f"callee {ctx.queue}")
    await peer.expect("ready")
    connection = await api.connect(ctx.url)
    try:
        rpc = await api.rpc(await connection.channel())
        method = getattr(rpc.proxy, ctx.queue)
        for i in range(RPC_WARMUP):
            await method(x=i, y=2)
        await calls(method)
        await rpc.close()
    finally:
        await connection.close()
        peer.send("stop")
        await peer.expect("idle")


async def rpc_one_by_one(ctx: harness.Context) -> None:
    async def calls(method: Any) -> None:
        latencies = []
        clock = time.perf_counter
        async with ctx.measure():
            for i in range(ctx.count):
                t0 = clock()
                await method(x=i, y=2)
                latencies.append(clock() - t0)
        latencies.sort()
        LATENCIES[_key(ctx.scenario, ctx.client, ctx.loop, ctx.round)] = {
            "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        }

    await _rpc_case(ctx, calls)


async def rpc_in_flight(ctx: harness.Context) -> None:
    each = ctx.count // IN_FLIGHT

    async def calls(method: Any) -> None:
        async def caller(w: int) -> None:
            for i in range(each):
                await method(x=i, y=w)

        async with ctx.measure():
            await asyncio.gather(*(caller(w) for w in range(IN_FLIGHT)))

    ctx.count = each * IN_FLIGHT
    await _rpc_case(ctx, calls)


SCENARIO_FUNCS: dict[str, harness.Scenario] = {
    "tasks one by one": tasks_one_by_one,
    "tasks/gather": tasks_gather,
    "tasks/batch": tasks_batch,
    "enqueue/gather": enqueue_gather,
    "enqueue/batch": enqueue_batch,
    "drain": drain,
    "rpc one by one": rpc_one_by_one,
    "rpc 100 in flight": rpc_in_flight,
}
HUTCH_ONLY = {"tasks/batch", "enqueue/batch"}


def _runs(client: str, scenario: str) -> bool:
    if client == "floor":
        return scenario in FLOOR_SCENARIOS
    return client == "hutch" or scenario not in HUTCH_ONLY


def clients_table(names: list[str]) -> dict[str, dict[str, harness.Scenario]]:
    return {
        name: {scenario: func for scenario, func in SCENARIO_FUNCS.items() if _runs(name, scenario)}
        for name in names
    }


# -- reporting -----------------------------------------------------------------------------------


def _paired(
    samples: list[harness.Sample],
    mine: tuple[str, str],
    theirs: tuple[str, str],
    value: Callable[[harness.Sample], float],
) -> dict[str, list[float]]:
    """Per loop, ratios value(mine) / value(theirs) paired by round; each is (scenario, client)."""
    out: dict[str, list[float]] = {}
    index = {(s.scenario, s.client, s.loop, s.round): s for s in samples}
    for s in samples:
        if (s.scenario, s.client) != mine:
            continue
        other = index.get((theirs[0], theirs[1], s.loop, s.round))
        if other is not None:
            out.setdefault(s.loop, []).append(value(s) / value(other))
    return out


def _latency(s: harness.Sample, which: str) -> float:
    return LATENCIES[_key(s.scenario, s.client, s.loop, s.round)][which]


GOALS: list[tuple[str, tuple[str, str], tuple[str, str], str, float, str]] = [
    # (name, hutch case, aio-pika case, metric, goal, direction); the floor's rows are the
    # same ratio for a client that costs nothing (a reference, not a goal of hutch's)
    (
        "tasks one by one",
        ("tasks one by one", "hutch"),
        ("tasks one by one", "aio-pika"),
        "rate",
        2,
        "≥",
    ),
    (
        "tasks batch vs aio-pika one by one",
        ("tasks/batch", "hutch"),
        ("tasks one by one", "aio-pika"),
        "rate",
        8,
        "≥",
    ),
    ("drain", ("drain", "hutch"), ("drain", "aio-pika"), "rate", 4, "≥"),
    (
        "rpc 100 in flight",
        ("rpc 100 in flight", "hutch"),
        ("rpc 100 in flight", "aio-pika"),
        "rate",
        6,
        "≥",
    ),
    (
        "rpc one by one p50",
        ("rpc one by one", "hutch"),
        ("rpc one by one", "aio-pika"),
        "p50_ms",
        0.4,
        "≤",
    ),
    (
        "floor: tasks one by one",
        ("tasks one by one", "floor"),
        ("tasks one by one", "aio-pika"),
        "rate",
        2,
        "≥",
    ),
    (
        "floor: rpc one by one p50",
        ("rpc one by one", "floor"),
        ("rpc one by one", "aio-pika"),
        "p50_ms",
        0.4,
        "≤",
    ),
]


def goals_table(samples: list[harness.Sample]) -> str:
    lines = [
        "| goal | loop | ÷ aio-pika (median, range) | target | met | rounds that meet it |",
        "|---|---|---|---|---|---|",
    ]
    for name, mine, theirs, metric, goal, direction in GOALS:
        value: Callable[[harness.Sample], float] = (
            (lambda s: s.rate) if metric == "rate" else (lambda s, m=metric: _latency(s, m))
        )
        for loop, ratios in _paired(samples, mine, theirs, value).items():
            mid = statistics.median(ratios)
            meets = [r >= goal if direction == "≥" else r <= goal for r in ratios]
            met = mid >= goal if direction == "≥" else mid <= goal
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            verdict = ("would be " if mine[1] == "floor" else "") + ("yes" if met else "NO")
            lines.append(
                f"| {name} | {loop} | **{mid:.2f}x** ({spread}) "
                f"| {direction} {goal:g}x | {verdict} | {sum(meets)} of {len(meets)} |"
            )
    return "\n".join(lines)


def floor_table(samples: list[harness.Sample]) -> str:
    """hutch against the floor in the one-by-one scenarios, paired per round: the rate ratio
    of the tasks, the p50 difference of the calls."""
    lines = ["| hutch against the floor | loop | median (range) |", "|---|---|---|"]
    index = {(s.scenario, s.client, s.loop, s.round): s for s in samples}
    for scenario in sorted(FLOOR_SCENARIOS, reverse=True):
        loops: dict[str, list[float]] = {}
        for s in samples:
            floor = index.get((scenario, "floor", s.loop, s.round))
            if (s.scenario, s.client) != (scenario, "hutch") or floor is None:
                continue
            if scenario.startswith("rpc"):
                value = _latency(s, "p50_ms") - _latency(floor, "p50_ms")
            else:
                value = s.rate / floor.rate
            loops.setdefault(s.loop, []).append(value)
        for loop, values in loops.items():
            mid, low, high = statistics.median(values), min(values), max(values)
            if scenario.startswith("rpc"):
                lines.append(
                    f"| {scenario}: p50, hutch minus floor | {loop} "
                    f"| {mid:+.3f} ms ({low:+.3f} to {high:+.3f}) |"
                )
            else:
                lines.append(
                    f"| {scenario}: rate, hutch ÷ floor | {loop} "
                    f"| {mid:.2f}x ({low:.2f}-{high:.2f}) |"
                )
    return "\n".join(lines)


def latency_table(samples: list[harness.Sample]) -> str:
    lines = [
        "| rpc one by one | loop | calls/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    loops = sorted({s.loop for s in samples}, key=harness.LOOPS.index)
    for loop in loops:
        for client in CLIENTS:
            mine = [
                s
                for s in samples
                if s.scenario == "rpc one by one" and s.client == client and s.loop == loop
            ]
            if not mine:
                continue
            rate = statistics.median(s.rate for s in mine)
            p50 = statistics.median(_latency(s, "p50_ms") for s in mine)
            p99 = statistics.median(_latency(s, "p99_ms") for s in mine)
            lines.append(f"| {client} | {loop} | {rate:,.0f} | {p50:.2f} | {p99:.2f} |")
    return "\n".join(lines)


def report(samples: list[harness.Sample], info: dict[str, Any], out: str) -> None:
    clients = {s.client for s in samples}
    rows = harness.summarize(samples, SCENARIOS, "hutch", "aio-pika")
    print()
    print(harness.table(rows, "hutch", "aio-pika", [c for c in CLIENTS if c in clients]))
    print()
    print(latency_table(samples))
    print()
    print(goals_table(samples))
    print()
    if any(s.client == "floor" for s in samples):
        print(floor_table(samples))
        print()
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    chart(ROOT / "docs" / f"{out}.png", rows, samples)
    print(f"chart: docs/{out}.png, samples: docs/{out}.json", file=sys.stderr)


COLORS = {
    ("hutch", "asyncio"): "#1f77b4",
    ("hutch", "uvloop"): "#aec7e8",
    ("aio-pika", "asyncio"): "#d62728",
    ("aio-pika", "uvloop"): "#ff9896",
    ("floor", "asyncio"): "#2ca02c",
    ("floor", "uvloop"): "#98df8a",
}


def chart(path: Path, rows: list[harness.Row], samples: list[harness.Sample]) -> None:
    """One panel per scenario (median rate, whiskers min-max of the rounds), one for the RPC
    latencies, one for CPU per operation; a fixed colour per client and loop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r.scenario for r in rows))
    fig, axes = plt.subplots(2, 5, figsize=(19, 8.5), squeeze=False)
    flat = list(axes.flat)

    def bars(ax: Any, entries: list[tuple[str, str, str, list[float]]], unit: str) -> None:
        mids = [statistics.median(v) for *_, v in entries]
        los = [m - min(v) for m, (*_, v) in zip(mids, entries, strict=True)]
        his = [max(v) - m for m, (*_, v) in zip(mids, entries, strict=True)]
        drawn = ax.bar(
            range(len(entries)),
            mids,
            yerr=[los, his],
            capsize=3,
            color=[COLORS.get((c, lp), "#7f7f7f") for _, c, lp, _ in entries],
        )
        ax.bar_label(
            drawn,
            labels=[f"{m:,.3g}" if m < 10 else f"{m:,.0f}" for m in mids],
            fontsize=7,
            padding=2,
        )
        ax.set_xticks(range(len(entries)), [label for label, *_ in entries], fontsize=7)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)

    for ax, scenario in zip(flat, scenarios, strict=False):
        entries = [
            (f"{client}\n{row.loop}", client, row.loop, values)
            for row in rows
            if row.scenario == scenario
            for client, values in row.rates.items()
        ]
        bars(ax, entries, "calls / s" if scenario.startswith("rpc") else "tasks / s")
        ax.set_title(scenario, fontsize=9)
    ax = flat[len(scenarios)]
    entries = []
    for row in rows:
        if row.scenario != "rpc one by one":
            continue
        for client in row.rates:
            mine = [
                s
                for s in samples
                if s.scenario == row.scenario and s.client == client and s.loop == row.loop
            ]
            entries.append(
                (f"{client}\n{row.loop}", client, row.loop, [_latency(s, "p50_ms") for s in mine])
            )
    if entries:
        bars(ax, entries, "ms")
        ax.set_title("rpc one by one: p50 latency", fontsize=9)
    ax = flat[len(scenarios) + 1]
    labels, client_us, broker_us, colors = [], [], [], []
    for row in rows:
        if "one by one" in row.scenario or row.loop != "asyncio":
            continue  # one by one: CPU per operation is wake-ups, not work
        for client in row.client_us:
            labels.append(f"{row.scenario} ({client})")
            client_us.append(statistics.median(row.client_us[client]))
            broker_us.append(statistics.median(row.broker_us[client]))
            colors.append(COLORS[(client, "asyncio")])
    xs = list(range(len(labels)))
    ax.bar([x - 0.2 for x in xs], client_us, width=0.4, color=colors, label="client")
    ax.bar([x + 0.2 for x in xs], broker_us, width=0.4, color="#7f7f7f", label="broker")
    ax.set_xticks(xs, labels, fontsize=6, rotation=60, ha="right")
    ax.set_ylabel("CPU µs / operation (asyncio)", fontsize=8)
    ax.set_title("CPU per task or call: client (caller + peer), broker", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    for ax in flat[len(scenarios) + 2 :]:
        ax.axis("off")
    fig.suptitle(
        "hutch vs aio-pika 10.x patterns on one RabbitMQ node (median of rounds; "
        "whiskers: min-max)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--node", type=Path, default=None)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--scenarios", default="")
    parser.add_argument("--out", default="bench_patterns")
    parser.add_argument("--redraw", action="store_true")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument(
        "--peer", nargs=3, metavar=("CLIENT", "LOOP", "URL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.peer:
        client, loop, url = args.peer
        with asyncio.Runner(loop_factory=harness.new_loop_factory(loop)) as runner:
            runner.run(_peer_main(client, url))
        return 0
    json_path = ROOT / "docs" / f"{args.out}.json"
    if args.redraw:
        samples, info = harness.load_samples(json_path)
        LATENCIES.update(info.pop("latencies", {}))
        report(samples, info.get("info", info), args.out)
        return 0
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    clients = clients_table(args.clients.split(","))
    scenarios = [
        s
        for s in SCENARIOS
        if not args.scenarios or any(s.name.startswith(p) for p in args.scenarios.split(","))
    ]
    started = time.monotonic()
    try:
        with harness.private_node(args.node) as node:
            info: dict[str, Any] = {
                **harness.machine(),
                "rabbitmq": harness.rabbitmq_version(node),
            }
            suite = harness.Suite(node, scenarios, clients, loops, args.rounds, args.scale)
            try:
                samples = suite.run(warmup=not args.no_warmup)
            finally:
                for peer in _residents.values():
                    with contextlib.suppress(Exception):
                        peer.shutdown()
    finally:
        print(f"run took {time.monotonic() - started:.0f} s", file=sys.stderr)
    info["rounds"] = args.rounds
    info["scale"] = args.scale
    info["command"] = " ".join([".venv/bin/python", "bench/bench_patterns.py", *argv])
    harness.save_json(json_path, samples, {"info": info, "latencies": LATENCIES})
    report(samples, info, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
