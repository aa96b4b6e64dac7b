"""The seed's two RPC programs (examples/rpc_caller.py, examples/rpc_callee.py) run as they are:
in processes of their own against the suite's RabbitMQ, and both in this process against
``memory://`` (``HUTCH_URL`` points them at the broker)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest

import hutch
from hutch.memory import get_broker

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def test_seed_caller_and_callee_programs_run_unchanged(amqp_url: str) -> None:
    """The seed's callee serves ``multiply`` and the seed's caller prints its 2000 results."""
    env = dict(os.environ, HUTCH_URL=amqp_url)
    # Declared beforehand as the callee declares it, so calls wait for the callee to come up.
    async with await hutch.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(
            "multiply", auto_delete=True, arguments={"x-dead-letter-exchange": "rpc.dlx"}
        )
        callee = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / "rpc_callee.py"), env=env
        )
        try:
            caller = await asyncio.create_subprocess_exec(
                sys.executable,
                str(EXAMPLES / "rpc_caller.py"),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(caller.communicate(), 90)
            assert caller.returncode == 0, err.decode()
            expected = [str(100 * i) for i in range(1000)] * 2
            assert out.decode().split() == expected
        finally:
            if callee.returncode is None:
                callee.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(callee.wait(), 15)
                except TimeoutError:
                    callee.kill()
                    await callee.wait()


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_seed_programs_run_unchanged_on_the_embedded_broker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed's callee and caller, run in one process on ``memory://``, give the same 2000
    results."""
    broker = f"rpc-examples-{uuid.uuid4().hex}"
    monkeypatch.setenv("HUTCH_URL", f"memory://{broker}")
    try:
        async with await hutch.connect(f"memory://{broker}") as connection:
            channel = await connection.channel()
            await channel.queue_declare(
                "multiply", auto_delete=True, arguments={"x-dead-letter-exchange": "rpc.dlx"}
            )
            callee = asyncio.ensure_future(_load("rpc_callee").main())
            try:
                await asyncio.wait_for(_load("rpc_caller").main(), 60)
            finally:
                callee.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await callee
        expected = [str(100 * i) for i in range(1000)] * 2
        assert capsys.readouterr().out.split() == expected
    finally:
        get_broker(broker).reset()
