"""Eager tasks on Python 3.11: a consumer callback's coroutine runs at once, in a task of its own.

Python 3.12 starts a task eagerly with ``asyncio.Task(coro, eager_start=True)``: its coroutine
runs up to its first real wait inside the call that created it, so an ``async def`` consumer
callback that replies and acks does so within the read that brought its message, the reply and
the ack leave in that read's one write, and a callback that never waits costs the event loop
nothing more. On 3.11 a task always takes its first step an event-loop iteration later: for an
RPC callee that is a loop turn (a system call) and a write more for every call.

``start_task`` does on 3.11 what ``eager_start`` does on 3.12, with the task asyncio implements
in Python (``asyncio.tasks._PyTask``, which behaves as the C task does, step for step): the task
is created with a stand-in for the loop that keeps the first step the task schedules instead of
scheduling it, then given the real loop, and its first step is taken in the call, in the task's
context, with the task as the loop's current task. From there on it is an ordinary task. So
inside the callback ``asyncio.current_task()`` is its task from the first line on,
``asyncio.timeout()``, task groups and cancellation reach it, and its context variables are its
own. Two differences remain on 3.11: the task is not an instance of the C ``asyncio.Task`` (nor
of ``asyncio.Future``), and its later steps, after it first waits, run in Python (about 1 µs
more per wait). Python 3.11 takes only security fixes now, so the private class this leans on
no longer changes; ``tests/unit/test_eager_tasks.py`` pins down each property on asyncio and
uvloop.

Because of that microsecond, the AMQP channel starts a task eagerly on 3.11 only where it saves
a loop turn: for a delivery that came alone in its read (see ``Channel._run_callback``).

``KeyboardInterrupt`` and ``SystemExit`` raised in that first step are raised again from the
loop, after the call: the call runs inside a read from the socket, which must finish (a task
that starts later would raise them from the loop too).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["EAGER_TASKS_ARE_CHEAP", "start_task"]

EAGER_TASKS_ARE_CHEAP = sys.version_info >= (3, 12)
"""Whether an eager task costs no more than a plain one (3.12+: both are C tasks). On 3.11 it
costs about 1 µs more per task, so it is worth it only where it saves a loop turn."""


def _raise(error: BaseException) -> None:
    raise error


def start_task(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None], *, eager: bool = True
) -> asyncio.Task[None] | None:
    """Run ``coro`` as a task, started eagerly unless ``eager`` is false; ``None`` if it
    already finished. The loop's own task factory, if set, wins (the task may then start
    later, or also have finished)."""
    try:
        if not eager or loop.get_task_factory() is not None:
            task = loop.create_task(coro)
        else:
            task = _start_eagerly(loop, coro)
    except (KeyboardInterrupt, SystemExit) as error:
        loop.call_soon(_raise, error)
        return None
    return None if task.done() else task


if sys.version_info >= (3, 12):

    def _start_eagerly(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        return asyncio.Task(coro, loop=loop, eager_start=True)

else:
    from asyncio.tasks import _PyTask  # type: ignore[attr-defined]

    _current_task = asyncio.current_task

    class _FirstStepKept:
        """What a task sees as its loop while it is created: the first step it schedules is
        kept here, to be taken at once."""

        __slots__ = ("_loop", "step")

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self._loop = loop
            self.step: Callable[[], None] | None = None

        def get_debug(self) -> bool:
            return self._loop.get_debug()

        def call_soon(self, callback: Callable[[], None], *, context: Any = None) -> None:
            self.step = callback

    def _start_eagerly(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        if _current_task(loop) is not None:  # inside a task: start as usual, next iteration
            return loop.create_task(coro)
        kept = _FirstStepKept(loop)
        task: asyncio.Task[None] = _PyTask(coro, loop=kept)
        task._loop = loop  # type: ignore[misc]
        step = kept.step
        assert step is not None, "asyncio's Task no longer schedules its first step in __init__"
        task._context.run(step)  # type: ignore[attr-defined]
        return task
