"""Helpers for the RPC tests."""

from __future__ import annotations

import asyncio

import hutch


async def observe_dead_letters(
    channel: hutch.Channel, name: str
) -> asyncio.Queue[hutch.IncomingMessage]:
    """Collect what ``rpc.dlx`` receives from queue ``name`` (bound to match every message)."""
    observed: asyncio.Queue[hutch.IncomingMessage] = asyncio.Queue()
    watch = f"{name}.dead"
    await channel.exchange_declare("rpc.dlx", "headers", auto_delete=True)
    await channel.queue_declare(watch, auto_delete=True)
    await channel.queue_bind(watch, "rpc.dlx", "", arguments={"x-match": "all"})

    def keep(message: hutch.IncomingMessage) -> None:
        if message.routing_key == name:
            observed.put_nowait(message)

    await channel.consume(watch, keep, no_ack=True)
    return observed


class Gate:
    """A callee function that says it started, then waits until the test releases it and
    returns ``"late"``."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.started.set()
        await self.release.wait()
        return "late"


class FirstCallWaits:
    """A callee function ``work(n=...)`` that records every ``n`` it runs and holds the call
    with ``n == 1`` (after saying it started) until the test releases it; returns ``n``."""

    def __init__(self) -> None:
        self.ran: list[int] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, *, n: int) -> int:
        self.ran.append(n)
        if n == 1:
            self.started.set()
            await self.release.wait()
        return n
