"""The ``hutch`` command as a user runs it: a subprocess, against both brokers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hutch
from hutch.patterns import Master

HERE = Path(__file__).parent


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HUTCH_URL", None)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def hutch_cmd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hutch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or _env(),
        check=False,
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


class WorkerProcess:
    """``hutch worker cli_apps.tasks:app`` running against a broker."""

    def __init__(self, url: str, out: Path, name: str) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hutch", "worker", "cli_apps.tasks:app", "--url", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(
                HUTCH_TEST_OUT=str(out),
                HUTCH_TEST_QUEUE=f"{name}.record",
                HUTCH_TEST_SLOW_QUEUE=f"{name}.slow",
            ),
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        assert "serving" in first, first + self.proc.stderr.read() if self.proc.stderr else ""

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, _err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out


@pytest.fixture
def worker(amqp_url: str, tmp_path: Path, name: str) -> Iterator[WorkerProcess]:
    process = WorkerProcess(amqp_url, tmp_path / "out.txt", name)
    yield process
    if process.proc.poll() is None:
        process.stop()


def _wait_lines(path: Path, predicate: object, timeout: float = 20) -> list[str]:
    """Wait (bounded) until the worker's output file satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    while True:
        lines = _lines(path)
        if predicate(lines):  # type: ignore[operator]
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; the worker wrote {lines[-5:]}")
        time.sleep(0.02)


def test_demo_on_the_embedded_broker_accounts_for_everything() -> None:
    """``hutch demo`` (memory:// by default) exits 0 and shows the table with the failures."""
    result = hutch_cmd("demo", "--tasks", "300", "--calls", "300")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every task and call accounted for" in result.stdout
    assert "dead-lettered" in result.stdout
    assert "tasks/s" in result.stdout
    assert "p50" in result.stdout


@pytest.mark.rabbitmq
def test_demo_on_rabbitmq_runs_worker_processes(amqp_url: str) -> None:
    """``hutch demo --url amqp://...`` serves from worker processes and accounts for all."""
    result = hutch_cmd(
        "demo", "--url", amqp_url, "--tasks", "300", "--calls", "300", "--workers", "1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every task and call accounted for" in result.stdout


def test_call_prints_the_result_as_json(worker: WorkerProcess, amqp_url: str) -> None:
    """``hutch call NAME k=v`` prints the function's result as JSON."""
    result = hutch_cmd("call", "cli.multiply", "x=6", "y=7", "--url", amqp_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"
    result = hutch_cmd("call", "cli.multiply", "--json", '{"x": 2, "y": 21}', "--url", amqp_url)
    assert result.stdout.strip() == "42"


def test_call_of_a_failing_function_exits_1_with_the_remote_error(
    worker: WorkerProcess, amqp_url: str
) -> None:
    """A remote exception goes to stderr and the exit code is 1."""
    result = hutch_cmd("call", "cli.fail", "why=broken", "--url", amqp_url)
    assert result.returncode == 1
    assert "KeyError" in result.stderr
    assert "broken" in result.stderr
    assert result.stdout == ""


def test_send_enqueues_a_task_the_worker_runs(
    worker: WorkerProcess, amqp_url: str, name: str
) -> None:
    """``hutch send NAME k=v`` reaches the worker's handler with the parsed value."""
    result = hutch_cmd("send", f"{name}.record", 'value={"a": [1, 2]}', "--url", amqp_url)
    assert result.returncode == 0, result.stderr
    lines = _wait_lines(worker.out, lambda lines: lines)
    assert lines == ["record {'a': [1, 2]}"]


def test_worker_sigterm_finishes_in_flight_tasks_and_loses_none(
    amqp_url: str, tmp_path: Path, name: str
) -> None:
    """SIGTERM during work: the worker finishes what it started and exits 0; every task is
    handled by it or left in the queue for the next worker."""
    out = tmp_path / "out.txt"
    first = WorkerProcess(amqp_url, out, name)
    count = 40

    async def send() -> None:
        async with await hutch.connect(amqp_url) as connection:
            master = Master(await connection.channel())
            await master.create_tasks(f"{name}.slow", [{"n": n} for n in range(count)])

    asyncio.run(send())
    _wait_lines(out, lambda lines: any(line.startswith("start") for line in lines))
    code, stdout = first.stop()
    assert code == 0, stdout
    assert "stopped" in stdout
    lines = _lines(out)
    started = {line.split()[1] for line in lines if line.startswith("start")}
    finished = {line.split()[1] for line in lines if line.startswith("done")}
    assert started == finished, "a task in flight was cut off by SIGTERM"
    assert len(finished) < count, "the worker finished everything before SIGTERM landed"

    second = WorkerProcess(amqp_url, out, name)
    try:
        _wait_lines(
            out,
            lambda lines: len({ln.split()[1] for ln in lines if ln.startswith("done")}) == count,
        )
    finally:
        second.stop()
    handled = {line.split()[1] for line in _lines(out) if line.startswith("done")}
    assert handled == {str(n) for n in range(count)}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["call", "x", "--url", "amqp://guest:guest@127.0.0.1:1/", "--connect-timeout", "0.5"],
            "could not connect",
        ),
        (["send", "x", "--url", "http://example.com/"], "unsupported URL scheme"),
        (
            ["worker", "no_such_module_here:app", "--url", "amqp://localhost/"],
            "cannot import module 'no_such_module_here'",
        ),
        (["worker", "cli_apps.tasks:nothing", "--url", "amqp://localhost/"], "is not a hutch.App"),
        (["call", "x", "y"], "not key=value"),
        (["send", "x", "--url", "memory://"], "lives inside one process"),
    ],
)
def test_errors_are_one_actionable_line_without_a_traceback(args: list[str], expected: str) -> None:
    """A person's mistake gets one line saying what went wrong, exit code 1, no traceback."""
    result = hutch_cmd(*args)
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unknown_names_say_to_start_a_worker(amqp_url: str, name: str) -> None:
    """Sending to a task or calling a function nobody serves says so in one line."""
    sent = hutch_cmd("send", f"{name}.nobody", "x=1", "--url", amqp_url)
    assert sent.returncode == 1
    assert "no queue named" in sent.stderr
    assert "hutch worker" in sent.stderr
    called = hutch_cmd("call", f"{name}.nobody", "--url", amqp_url)
    assert called.returncode == 1
    assert "no function named" in called.stderr


def test_debug_shows_the_traceback() -> None:
    """``--debug`` lets the traceback through for a bug report."""
    result = hutch_cmd("--debug", "send", "x", "--url", "http://example.com/")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
