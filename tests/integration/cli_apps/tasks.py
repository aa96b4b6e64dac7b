"""An app the CLI tests serve with ``hutch worker``: each handler appends a line to a file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import hutch
from hutch.app import App

app = App()
OUT = Path(os.environ.get("HUTCH_TEST_OUT", os.devnull))
QUEUE = os.environ.get("HUTCH_TEST_QUEUE", "cli.record")
SLOW_QUEUE = os.environ.get("HUTCH_TEST_SLOW_QUEUE", "cli.slow")


def _write(line: str) -> None:
    with OUT.open("a") as out:
        out.write(line + "\n")


@app.task(name=QUEUE)
async def record(*, value: object) -> None:
    """Append the value it was sent."""
    _write(f"record {value!r}")


@app.task(name=SLOW_QUEUE, durable=True, concurrency=2)
async def slow(*, n: int) -> None:
    """Take a while, so a SIGTERM lands while tasks are in flight."""
    _write(f"start {n}")
    await asyncio.sleep(0.05)
    _write(f"done {n}")


@app.rpc(name="cli.multiply")
async def multiply(*, x: int, y: int) -> int:
    return x * y


@app.rpc(name="cli.fail")
async def fail(*, why: str) -> None:
    raise KeyError(why)


__all__ = ["app", "hutch"]
