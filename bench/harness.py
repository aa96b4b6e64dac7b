"""A small harness for side-by-side benchmarks against a private RabbitMQ node.

Benchmarks here compare clients (hutch against aiormq or aio-pika) *in the same run against the
same broker*, because this machine is shared and noisy (±25 % between runs): only ratios measured
side by side mean anything. The harness gives every benchmark the same parts:

- ``private_node()``: a RabbitMQ node of our own through ``scripts/rabbitmq_node.py`` (or one
  already started with ``python scripts/rabbitmq_node.py start DIR``, to skip the ~7 s boot);
- ``Suite``: scenarios x clients x event loops x rounds, run *interleaved* (each round runs every
  client on a scenario back to back, rotating who goes first), each case in a fresh event loop;
- ``Context.measure()``: wall time, this process's CPU plus that of any ``Peer`` process, and the
  broker's CPU (from /proc, ``Node.cpu_seconds()``) around the part that counts;
- ``Peer``: a helper process (a worker, an RPC callee) whose CPU counts as the client's;
- a table of medians with their spread and paired ratios, a JSON dump, and a PNG chart.

A scenario function is ``async def run(ctx: Context) -> None``; it sets up outside
``ctx.measure()`` and does ``ctx.count`` operations inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import rabbitmq_node  # noqa: E402

Node = rabbitmq_node.Node

LOOPS = ("asyncio", "uvloop")


# -- a consumer that acks ----------------------------------------------------------------------


def acking_consumer(count: int, *, sync: bool) -> tuple[asyncio.Future[None], Callable[..., Any]]:
    """A hutch consumer callback that acks each delivery (a plain ``def`` calling
    ``message.ack()`` if ``sync``, else an ``async def`` awaiting it), and a future that is done
    after ``count`` deliveries."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    left = count

    def on_message_sync(message: Any) -> None:
        nonlocal left
        message.ack()
        left -= 1
        if not left:
            done.set_result(None)

    async def on_message(message: Any) -> None:
        nonlocal left
        await message.ack()
        left -= 1
        if not left:
            done.set_result(None)

    return done, on_message_sync if sync else on_message


# -- the broker ---------------------------------------------------------------------------------


@contextlib.contextmanager
def private_node(folder: Path | None = None) -> Iterator[rabbitmq_node.Node]:
    """A RabbitMQ node for this run: the one already running in ``folder``, or a fresh one in a
    temporary folder that is removed afterwards."""
    if folder is not None:
        node = rabbitmq_node.load(folder)
        if not rabbitmq_node.port_open(node.port):
            raise SystemExit(f"no node listens on port {node.port} (from {folder}/node.json)")
        yield node
        return
    tmp = Path(tempfile.mkdtemp(prefix="hutch-bench-"))
    os.chmod(tmp, 0o755)
    node = Node(tmp)
    print(f"starting a private RabbitMQ node in {tmp} ...", file=sys.stderr)
    node.start()
    try:
        yield node
    finally:
        node.remove()


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far, read from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in ("hutch", "aiormq", "aio-pika", "pamqp", "uvloop"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        **versions,
    }


def rabbitmq_version(node: rabbitmq_node.Node) -> str:
    """The broker's version as its AMQP handshake announces it (no rabbitmqctl call)."""
    import socket

    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        data = b""
        while len(data) < 7 or len(data) < 8 + int.from_bytes(data[3:7], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    from pamqp import frame

    _consumed, _channel, start = frame.unmarshal(data)
    version = start.server_properties.get("version", "?")  # type: ignore[union-attr]
    return version.decode() if isinstance(version, bytes) else str(version)


# -- peers --------------------------------------------------------------------------------------


class Peer:
    """A helper process (``python ARGS...``) whose CPU is the client's too.

    The process must print a line ``ready`` on stdout once it is set up; ``start()`` waits for
    it. ``stop()`` terminates it (or it exits on its own when stdin closes, if it watches that).
    """

    def __init__(self, *args: str) -> None:
        self.args = [sys.executable, *args]
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30) -> None:
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.strip() == "ready":
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"peer {' '.join(self.args)} did not get ready")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Sample:
    """One measured case."""

    scenario: str
    client: str
    loop: str
    round: int
    count: int
    seconds: float
    client_cpu: float
    broker_cpu: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @property
    def client_us(self) -> float:
        return self.client_cpu / self.count * 1e6

    @property
    def broker_us(self) -> float:
        return self.broker_cpu / self.count * 1e6


class Measurement:
    """What ``Context.measure()`` yields; ``stop_clock()`` ends the wall-clock part early (e.g.
    before a round trip that only makes sure the broker has processed everything)."""

    def __init__(self) -> None:
        self.end: float | None = None

    def stop_clock(self) -> None:
        if self.end is None:
            self.end = time.perf_counter()


@dataclass
class Context:
    """What a scenario function gets."""

    url: str
    node: rabbitmq_node.Node
    scenario: str
    client: str
    loop: str
    round: int
    count: int
    queue: str
    peers: list[Peer] = field(default_factory=list)
    sample: Sample | None = None

    def _client_cpu(self) -> float:
        return time.process_time() + sum(peer.cpu_seconds() for peer in self.peers)

    @contextlib.asynccontextmanager
    async def measure(self) -> AsyncIterator[Measurement]:
        """Time ``self.count`` operations: wall clock, client CPU (this process and peers),
        broker CPU."""
        measurement = Measurement()
        broker0 = self.node.cpu_seconds()
        client0 = self._client_cpu()
        start = time.perf_counter()
        yield measurement
        measurement.stop_clock()
        assert measurement.end is not None
        client = self._client_cpu() - client0
        broker = self.node.cpu_seconds() - broker0
        self.sample = Sample(
            self.scenario,
            self.client,
            self.loop,
            self.round,
            self.count,
            measurement.end - start,
            client,
            broker,
        )


Scenario = Callable[[Context], Awaitable[None]]


@dataclass
class ScenarioSpec:
    """A scenario: its name, how many operations one case does, the unit of its rate, and
    the ratio to the baseline it should reach (if any)."""

    name: str
    count: int
    goal: float | None = None
    note: str = ""


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)


def new_loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


class Suite:
    """Scenarios x clients x loops x rounds, run interleaved against one node."""

    def __init__(
        self,
        node: rabbitmq_node.Node,
        scenarios: Sequence[ScenarioSpec],
        clients: dict[str, dict[str, Scenario]],
        loops: Sequence[str],
        rounds: int,
        scale: float = 1.0,
    ) -> None:
        self.node = node
        self.scenarios = list(scenarios)
        self.clients = clients
        self.loops = list(loops)
        self.rounds = rounds
        self.scale = scale
        self.samples: list[Sample] = []

    def run_case(
        self, spec: ScenarioSpec, client: str, loop: str, round_: int, count: int
    ) -> Sample:
        func = self.clients[client][spec.name]
        ctx = Context(
            url=self.node.url,
            node=self.node,
            scenario=spec.name,
            client=client,
            loop=loop,
            round=round_,
            count=count,
            queue=f"bench.{_slug(spec.name)}.{client}.{os.urandom(4).hex()}",
        )
        with asyncio.Runner(loop_factory=new_loop_factory(loop)) as runner:
            runner.run(func(ctx))
        for peer in ctx.peers:
            peer.stop()
        if ctx.sample is None:
            raise RuntimeError(f"{spec.name}/{client} never entered ctx.measure()")
        return ctx.sample

    def run(self, warmup: bool = True) -> list[Sample]:
        names = list(self.clients)
        if warmup:
            for spec in self.scenarios:
                for client in names:
                    if spec.name in self.clients[client]:
                        for loop in self.loops:
                            self.run_case(spec, client, loop, -1, max(spec.count // 10, 10))
        for round_ in range(self.rounds):
            for spec in self.scenarios:
                count = max(int(spec.count * self.scale), 10)
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for loop in self.loops:
                    for client in order:
                        if spec.name not in self.clients[client]:
                            continue
                        sample = self.run_case(spec, client, loop, round_, count)
                        self.samples.append(sample)
                        print(
                            f"  round {round_ + 1}/{self.rounds} {spec.name:<22} {client:<8} "
                            f"{loop:<7} {sample.rate:>9,.0f}/s  client {sample.client_us:6.1f} µs"
                            f"  broker {sample.broker_us:6.1f} µs",
                            file=sys.stderr,
                        )
        return self.samples


# -- reporting ----------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: Sequence[float]) -> str:
    """The range of ``values`` as ± percent of their median."""
    if len(values) < 2:
        return ""
    mid = _median(values)
    lo, hi = min(values), max(values)
    return f"-{(mid - lo) / mid * 100:.0f}/+{(hi - mid) / mid * 100:.0f}%"


@dataclass
class Row:
    """One line of the table: a scenario on one loop, every client's median, the ratio."""

    scenario: str
    loop: str
    rates: dict[str, list[float]]
    client_us: dict[str, list[float]]
    broker_us: dict[str, list[float]]
    ratios: list[float]
    goal: float | None


def summarize(
    samples: Sequence[Sample],
    scenarios: Sequence[ScenarioSpec],
    subject: str,
    baseline: str,
) -> list[Row]:
    """Group samples into rows; ratios are paired per round (same round, same loop)."""
    rows = []
    loops = sorted({s.loop for s in samples}, key=lambda x: LOOPS.index(x))
    for spec in scenarios:
        for loop in loops:
            mine = [s for s in samples if s.scenario == spec.name and s.loop == loop]
            if not mine:
                continue
            clients = sorted({s.client for s in mine}, key=lambda c: (c != subject, c))
            rates = {c: [s.rate for s in mine if s.client == c] for c in clients}
            client_us = {c: [s.client_us for s in mine if s.client == c] for c in clients}
            broker_us = {c: [s.broker_us for s in mine if s.client == c] for c in clients}
            by_round: dict[int, dict[str, float]] = {}
            for s in mine:
                by_round.setdefault(s.round, {})[s.client] = s.rate
            ratios = [
                r[subject] / r[baseline]
                for r in by_round.values()
                if subject in r and baseline in r
            ]
            rows.append(Row(spec.name, loop, rates, client_us, broker_us, ratios, spec.goal))
    return rows


def table(rows: Sequence[Row], subject: str, baseline: str, clients: Sequence[str]) -> str:
    """A Markdown table: every client's rate (median, spread), the paired ratio of ``subject``
    to ``baseline``, and CPU per message of both next to the broker's."""
    head = (
        "| scenario | loop | "
        + " | ".join(f"{c} msg/s" for c in clients)
        + f" | {subject} / {baseline} (median, range) | goal | {subject} client µs/msg "
        f"| broker µs/msg | {baseline} client µs/msg | broker µs/msg |"
    )
    lines = [head, "|" + "---|" * (len(clients) + 8)]
    for row in rows:

        def rate(client: str, row: Row = row) -> str:
            values = row.rates.get(client, [])
            if not values:
                return "-"
            return f"{_median(values):,.0f} ({_spread(values)})"

        def us(table_: dict[str, list[float]], client: str) -> str:
            values = table_.get(client, [])
            return f"{_median(values):.1f}" if values else "-"

        if row.ratios:
            ratio = f"**{_median(row.ratios):.1f}x** ({min(row.ratios):.1f}-{max(row.ratios):.1f})"
        else:
            ratio = "-"
        goal = f"≥ {row.goal:g}x" if row.goal else ""
        lines.append(
            f"| {row.scenario} | {row.loop} | "
            + " | ".join(rate(c) for c in clients)
            + f" | {ratio} | {goal} | {us(row.client_us, subject)} "
            f"| {us(row.broker_us, subject)} | {us(row.client_us, baseline)} "
            f"| {us(row.broker_us, baseline)} |"
        )
    return "\n".join(lines)


def save_json(path: Path, samples: Sequence[Sample], extra: dict[str, Any]) -> None:
    data = {
        **extra,
        "samples": [
            {**asdict(s), "rate": s.rate, "client_us": s.client_us, "broker_us": s.broker_us}
            for s in samples
        ],
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


def load_samples(path: Path) -> tuple[list[Sample], dict[str, Any]]:
    """Samples saved by ``save_json`` (to redraw a chart or table without rerunning)."""
    data = json.loads(path.read_text())
    names = set(Sample.__dataclass_fields__)
    samples = [Sample(**{k: v for k, v in s.items() if k in names}) for s in data.pop("samples")]
    return samples, data


_COLORS = {  # per client: (asyncio, uvloop)
    "hutch": ("#1f77b4", "#7fb2dd"),
    "aiormq": ("#d62728", "#f08a8b"),
    "aio-pika": ("#ff7f0e", "#ffbf86"),
    "raw": ("#555555", "#aaaaaa"),
}
_OTHER = ("#2ca02c", "#98df8a")


def _color(client: str, loop: str) -> str:
    pair = _COLORS.get(client, _OTHER)
    return pair[1] if loop == "uvloop" else pair[0]


def chart(path: Path, rows: Sequence[Row], title: str) -> None:
    """One column per scenario: messages per second on top (whiskers span the rounds'
    min..max), CPU per message below (each client's own, and the broker's while serving it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r.scenario for r in rows))
    fig, axes = plt.subplots(
        2,
        len(scenarios),
        figsize=(3.6 * len(scenarios), 7.2),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 2]},
    )
    for column, scenario in enumerate(scenarios):
        top, bottom = axes[0][column], axes[1][column]
        labels, mids, los, his, colors = [], [], [], [], []
        cpu_client, cpu_broker = [], []
        for row in rows:
            if row.scenario != scenario:
                continue
            for client, values in row.rates.items():
                mid = _median(values)
                labels.append(f"{client}\n{row.loop}")
                mids.append(mid)
                los.append(mid - min(values))
                his.append(max(values) - mid)
                colors.append(_color(client, row.loop))
                cpu_client.append(_median(row.client_us[client]))
                cpu_broker.append(_median(row.broker_us[client]))
        xs = list(range(len(mids)))
        bars = top.bar(xs, mids, yerr=[los, his], capsize=3, color=colors)
        top.bar_label(bars, labels=[f"{m:,.0f}" for m in mids], fontsize=7, padding=2)
        top.set_xticks(xs, labels, fontsize=7)
        top.set_title(scenario, fontsize=9)
        top.set_ylabel("messages / s" if column == 0 else "", fontsize=8)
        top.tick_params(axis="y", labelsize=7)
        top.margins(y=0.12)
        top.set_xlim(-0.7, max(len(xs), 3) - 0.3)
        left = bottom.bar([x - 0.2 for x in xs], cpu_client, width=0.4, color=colors)
        right = bottom.bar(
            [x + 0.2 for x in xs], cpu_broker, width=0.4, color="#cccccc", hatch="//"
        )
        bottom.bar_label(left, labels=[f"{v:.0f}" for v in cpu_client], fontsize=6)
        bottom.bar_label(right, labels=[f"{v:.0f}" for v in cpu_broker], fontsize=6)
        bottom.set_xticks(xs, labels, fontsize=7)
        bottom.set_ylabel("CPU µs / message" if column == 0 else "", fontsize=8)
        bottom.tick_params(axis="y", labelsize=7)
        bottom.margins(y=0.15)
        bottom.set_xlim(-0.7, max(len(xs), 3) - 0.3)
        if column == 0:
            bottom.legend([left, right], ["client", "broker"], fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
