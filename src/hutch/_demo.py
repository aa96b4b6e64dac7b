"""``hutch demo``: tasks and calls end to end, a failing task, and the numbers.

On ``memory://`` (the default) the workers and the callee run in this process; on RabbitMQ they
run as ``hutch worker hutch._demo:app`` processes. Every task reports back on a queue named in
its arguments, so the demo can account for each one: done, or retried and then dead-lettered.
The exit code is 0 only when every task and every call is accounted for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from hutch._connect import connect_robust
from hutch.abc import Channel, Connection
from hutch.app import App
from hutch.message import IncomingMessage, Message
from hutch.patterns.master import HEADER_ERROR_TYPE, Master, Retry
from hutch.patterns.rpc import RPC

WORK = "hutch.demo.work"
FLAKY = "hutch.demo.flaky"
MULTIPLY = "hutch.demo.multiply"
DEAD = f"{FLAKY}.dead"
FLAKY_RETRY = Retry(attempts=2, delay=0.2, factor=2.0, max_delay=1.0)
CALLS_IN_FLIGHT = 64
TASK_BATCH = 250

app = App()
_reporters: dict[int, Channel] = {}


@app.on_startup
async def _open_reporter(connection: Connection) -> None:
    _reporters[id(connection)] = await connection.channel(publisher_confirms=False)


async def _report(report_to: str, kind: str, task_id: int) -> None:
    channel = next(iter(_reporters.values()))
    body = json.dumps({"kind": kind, "id": task_id}).encode()
    await channel.publish(Message(body), report_to)


@app.task(name=WORK, auto_delete=True)
async def work(*, task_id: int, report_to: str) -> None:
    """A task that succeeds: it reports that it ran."""
    await _report(report_to, "done", task_id)


@app.task(name=FLAKY, retry=FLAKY_RETRY, auto_delete=True)
async def flaky(*, task_id: int, report_to: str) -> None:
    """A task that always fails: it is retried, then dead-lettered."""
    await _report(report_to, "attempt", task_id)
    raise RuntimeError(f"demo task {task_id} fails on purpose")


@app.rpc(name=MULTIPLY)
async def multiply(*, x: int, y: int) -> int:
    """The seed's RPC function."""
    return x * y


@dataclass
class Tally:
    """What the demo saw come back."""

    sent_at: dict[int, float] = field(default_factory=dict)
    done_latency: dict[int, float] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    call_latency: list[float] = field(default_factory=list)
    last_done_at: float = 0.0
    wrong_results: int = 0
    failed_calls: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, message: IncomingMessage) -> None:
        event = json.loads(message.body)
        task_id = int(event["id"])
        if event["kind"] == "done":
            self.last_done_at = time.perf_counter()
            self.done_latency[task_id] = self.last_done_at - self.sent_at.get(task_id, 0.0)
        else:
            self.attempts[task_id] = self.attempts.get(task_id, 0) + 1
        self.changed.set()


def _percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@contextlib.asynccontextmanager
async def _workers(
    url: str, connection: Connection, count: int, debug: bool
) -> AsyncIterator[None]:
    """Serve the demo app: in this process on memory://, else in ``count`` processes."""
    if url.startswith("memory://"):
        serving = await app.serve(connection)
        try:
            yield
        finally:
            await serving.close()
        return
    env = dict(os.environ, HUTCH_URL=url)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hutch",
            "worker",
            "hutch._demo:app",
            stdout=asyncio.subprocess.PIPE,
            env=env,
            stderr=None if debug else asyncio.subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                line = await proc.stdout.readline()
            if b"serving" not in line:
                raise RuntimeError("a demo worker process did not start; run with --debug")
        yield
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            async with asyncio.timeout(30):
                await proc.wait()


async def _send_tasks(
    master: Master, tally: Tally, count: int, report_to: str, advance: Any
) -> None:
    for start in range(0, count, TASK_BATCH):
        ids = range(start, min(start + TASK_BATCH, count))
        now = time.perf_counter()
        for task_id in ids:
            tally.sent_at[task_id] = now
        await master.create_tasks(
            WORK, [{"task_id": task_id, "report_to": report_to} for task_id in ids]
        )
        advance(len(ids))


async def _make_calls(rpc: RPC, tally: Tally, count: int, advance: Any) -> None:
    numbers = iter(range(count))

    async def caller() -> None:
        for i in numbers:
            started = time.perf_counter()
            try:
                result = await rpc.call(MULTIPLY, kwargs={"x": 100, "y": i}, timeout=30)
            except Exception:
                tally.failed_calls += 1
            else:
                tally.call_latency.append(time.perf_counter() - started)
                if result != 100 * i:
                    tally.wrong_results += 1
            advance(1)

    await asyncio.gather(*(caller() for _ in range(min(CALLS_IN_FLIGHT, max(count, 1)))))


async def _wait_for(tally: Tally, done: Any, deadline: float) -> bool:
    while not done():
        tally.changed.clear()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await tally.changed.wait()
    return True


async def _dead_letters(
    channel: Channel, run: str, expected: int, deadline: float
) -> list[IncomingMessage]:
    """Take this run's tasks out of the dead-letter queue (they arrive just after the last
    attempt, so poll briefly)."""
    found: list[IncomingMessage] = []
    while len(found) < expected and time.monotonic() < deadline:
        message = await channel.get(DEAD)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        await message.ack()
        if json.loads(message.body).get("report_to", "").endswith(run):
            found.append(message)
    return found


async def run_demo(
    *, url: str, tasks: int, calls: int, workers: int, failing: int, debug: bool = False
) -> int:
    """Run the demo against ``url``; return the exit code."""
    if not debug:
        # The failing tasks are the point of the demo: their tracebacks would only alarm.
        logging.getLogger("hutch").setLevel(logging.CRITICAL)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    console = Console(stderr=False)
    where = "the embedded broker (memory://)" if url.startswith("memory://") else url
    console.print(
        f"[bold]hutch demo[/] on {where}: {tasks} tasks, {calls} calls, {failing} failing tasks"
    )
    run = uuid.uuid4().hex[:12]
    report_to = f"hutch.demo.events.{run}"
    tally = Tally()
    async with await connect_robust(url, initial_connect_timeout=5) as connection:
        channel = await connection.channel()
        await channel.queue_declare(report_to, exclusive=True, auto_delete=True)
        await channel.consume(report_to, tally.on_event, no_ack=True)
        await channel.queue_declare(DEAD, durable=True)
        async with _workers(url, connection, workers, debug):
            master = Master(channel)
            rpc = await RPC.create(channel)
            progress = Progress(
                TextColumn("{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
            )
            with progress:
                sent = progress.add_task("tasks sent", total=tasks)
                handled = progress.add_task("tasks handled", total=tasks)
                called = progress.add_task("calls answered", total=calls)
                started = time.perf_counter()
                for task_id in range(tasks, tasks + failing):
                    await master.create_task(
                        FLAKY, kwargs={"task_id": task_id, "report_to": report_to}
                    )
                await _send_tasks(
                    master, tally, tasks, report_to, lambda n: progress.advance(sent, n)
                )

                async def watch() -> None:
                    while len(tally.done_latency) < tasks:
                        tally.changed.clear()
                        progress.update(handled, completed=len(tally.done_latency))
                        await tally.changed.wait()
                    progress.update(handled, completed=tasks)

                watcher = asyncio.ensure_future(watch())
                calls_started = time.perf_counter()
                await _make_calls(rpc, tally, calls, lambda n: progress.advance(called, n))
                calls_elapsed = time.perf_counter() - calls_started
                deadline = time.monotonic() + 60 + tasks / 200
                all_done = await _wait_for(
                    tally, lambda: len(tally.done_latency) >= tasks, deadline
                )
                tasks_elapsed = max(tally.last_done_at - started, 1e-9)
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                await _wait_for(
                    tally,
                    lambda: all(
                        tally.attempts.get(i, 0) > FLAKY_RETRY.attempts
                        for i in range(tasks, tasks + failing)
                    ),
                    deadline,
                )
            dead = await _dead_letters(channel, run, failing, time.monotonic() + 10)
            await rpc.close()

    retried = sum(max(0, n - 1) for n in tally.attempts.values())
    table = Table(title="hutch demo")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("tasks/s (sent → handled)", f"{tasks / tasks_elapsed:,.0f}")
    table.add_row("calls/s (64 in flight)", f"{calls / calls_elapsed:,.0f}" if calls else "-")
    task_ms = [v * 1000 for v in tally.done_latency.values()]
    call_ms = [v * 1000 for v in tally.call_latency]
    if task_ms:
        table.add_row(
            "task latency p50 / p99",
            f"{_percentile(task_ms, 50):.1f} / {_percentile(task_ms, 99):.1f} ms",
        )
    if call_ms:
        table.add_row(
            "call latency p50 / p99",
            f"{_percentile(call_ms, 50):.2f} / {_percentile(call_ms, 99):.2f} ms",
        )
    table.add_row("retried", str(retried))
    table.add_row("dead-lettered", str(len(dead)))
    console.print(table)
    if dead:
        headers = dead[0].headers or {}
        console.print(
            f"a dead-lettered task: {dead[0].body.decode()} — "
            f"{headers.get(HEADER_ERROR_TYPE)}: {headers.get('hutch-error-message')}"
        )

    problems = []
    if not all_done:
        problems.append(f"{tasks - len(tally.done_latency)} tasks were not handled")
    if len(tally.call_latency) != calls or tally.wrong_results:
        problems.append(
            f"{calls - len(tally.call_latency)} calls failed, "
            f"{tally.wrong_results} gave a wrong result"
        )
    if len(dead) != failing:
        problems.append(f"{failing - len(dead)} failing tasks did not reach {DEAD}")
    if problems:
        console.print("[red]not everything was accounted for:[/] " + "; ".join(problems))
        return 1
    console.print("[green]every task and call accounted for[/]")
    return 0
