"""``hutch._eager.start_task``: a consumer callback's coroutine starts at once, in its own task.

On Python 3.12+ this is asyncio's ``eager_start``; on 3.11 it is hutch's backport, which must
keep every property of a task: the coroutine sees its task as current from its first line,
``asyncio.timeout()`` and cancellation reach it, and its context variables stay its own. The
loop calls a protocol's ``data_received`` outside any task, so each test starts its coroutine
from a plain loop callback, on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import uvloop

from hutch._eager import start_task

T = TypeVar("T")
WAIT = 10  # bound on waits for what should come at once
_where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="outside")


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Coroutine[Any, Any, T]], T]]:
    """Run a test's coroutine to its end on the loop the test is parametrized with."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner.run


async def _from_a_loop_callback(start: Callable[[], T]) -> T:
    """What ``start()`` returns, called from a plain loop callback (no task is current)."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()

    def callback() -> None:
        assert asyncio.current_task() is None
        outcome.set_result(start())

    loop.call_soon(callback)
    return await asyncio.wait_for(outcome, WAIT)


def test_a_coroutine_that_never_waits_finishes_inside_the_call(run: Any) -> None:
    """A coroutine that never waits has run to its end when ``start_task`` returns, which
    then returns no task."""
    ran: list[str] = []

    async def body() -> None:
        ran.append("first line")
        ran.append("last line")

    async def scenario() -> None:
        def start() -> tuple[object, list[str]]:
            task = start_task(asyncio.get_running_loop(), body())
            return task, list(ran)

        task, seen_on_return = await _from_a_loop_callback(start)
        assert task is None
        assert seen_on_return == ["first line", "last line"]

    run(scenario())


def test_the_coroutine_runs_in_its_task_from_its_first_line(run: Any) -> None:
    """Before and after its first wait the coroutine's current task is the task
    ``start_task`` returned, which ends with the coroutine."""
    current: list[asyncio.Task[Any] | None] = []

    async def body() -> None:
        current.append(asyncio.current_task())
        await asyncio.sleep(0)
        current.append(asyncio.current_task())

    async def scenario() -> None:
        def start() -> tuple[Any, list[Any]]:
            task = start_task(asyncio.get_running_loop(), body())
            return task, list(current)

        task, seen_on_return = await _from_a_loop_callback(start)
        assert task is not None
        assert seen_on_return == [task]  # the first step ran inside the call, in the task
        await asyncio.wait_for(task, WAIT)
        assert current == [task, task]

    run(scenario())


def test_context_variables_set_by_the_coroutine_stay_its_own(run: Any) -> None:
    """A context variable the coroutine sets in its first step is seen by the rest of it,
    and neither by the code that started it nor by the next coroutine started."""
    seen: list[str] = []

    async def body(name: str) -> None:
        seen.append(_where.get())
        _where.set(name)
        await asyncio.sleep(0)
        seen.append(_where.get())

    async def scenario() -> None:
        def start() -> tuple[Any, Any, str]:
            loop = asyncio.get_running_loop()
            first = start_task(loop, body("first"))
            second = start_task(loop, body("second"))
            return first, second, _where.get()

        first, second, after = await _from_a_loop_callback(start)
        assert after == "outside"
        await asyncio.wait_for(asyncio.gather(first, second), WAIT)
        assert seen == ["outside", "outside", "first", "second"]

    run(scenario())


def test_a_timeout_entered_in_the_first_step_ends_the_wait(run: Any) -> None:
    """``asyncio.timeout()`` entered before the coroutine's first wait cancels that wait when
    it expires, and the coroutine sees ``TimeoutError``."""
    outcome: list[str] = []

    async def body() -> None:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.get_running_loop().create_future()  # never resolved
        except TimeoutError:
            outcome.append("timed out")

    async def scenario() -> None:
        task = await _from_a_loop_callback(lambda: start_task(asyncio.get_running_loop(), body()))
        assert task is not None
        await asyncio.wait_for(task, WAIT)
        assert outcome == ["timed out"]

    run(scenario())


def test_cancelling_the_task_before_it_ran_cancels_what_the_coroutine_waits_for(
    run: Any,
) -> None:
    """A task cancelled right after ``start_task`` (before the loop ran it) ends cancelled:
    the coroutine gets ``CancelledError`` at its first wait and the future it waited for is
    cancelled, as a task's cancel does."""
    outcome: list[str] = []

    async def body(gate: asyncio.Future[None]) -> None:
        try:
            await gate
        except asyncio.CancelledError:
            outcome.append("cancelled at its wait")
            raise

    async def scenario() -> None:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def start() -> Any:
            task = start_task(asyncio.get_running_loop(), body(gate))
            assert task is not None
            task.cancel()
            return task

        task = await _from_a_loop_callback(start)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT)
        assert task.cancelled()
        assert gate.cancelled()
        assert outcome == ["cancelled at its wait"]

    run(scenario())


_SYSTEM_EXIT_SCRIPT = """
import asyncio, sys, uvloop
from hutch._eager import start_task

async def body():
    raise SystemExit("stop")

async def scenario():
    loop = asyncio.get_running_loop()

    def start():
        assert start_task(loop, body()) is None
        print("start_task returned", flush=True)

    loop.call_soon(start)
    await asyncio.sleep(30)  # the loop raises SystemExit long before this ends
    print("still running", flush=True)

factory = uvloop.new_event_loop if sys.argv[1] == "uvloop" else asyncio.new_event_loop
with asyncio.Runner(loop_factory=factory) as runner:
    runner.run(scenario())
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_callbacks_system_exit_is_raised_from_the_loop_after_the_call(loop: str) -> None:
    """``SystemExit`` (or ``KeyboardInterrupt``) raised in the first step does not escape from
    ``start_task``, which runs inside a socket read that must finish: the loop raises it next,
    and the program exits. (In a process of its own: it ends the process's loop.)"""
    done = subprocess.run(
        [sys.executable, "-c", _SYSTEM_EXIT_SCRIPT, loop],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
    )
    assert done.stdout.splitlines() == ["start_task returned"]
    assert done.returncode == 1, done.stderr  # SystemExit("stop"): message on stderr, status 1
    assert done.stderr.strip().endswith("stop")


def test_a_loops_own_task_factory_starts_the_task(run: Any) -> None:
    """With a task factory set on the loop, the coroutine's task comes from that factory and is
    handed back while it runs."""
    made: list[Any] = []

    async def body() -> None:
        await asyncio.sleep(0)

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        try:
            task = await _from_a_loop_callback(lambda: start_task(loop, body()))
        finally:
            loop.set_task_factory(None)
        assert made == [task]
        await asyncio.wait_for(task, WAIT)

    run(scenario())


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager_task_factory came with Python 3.12")
@pytest.mark.parametrize("eager", [True, False])
def test_a_task_the_factory_already_finished_is_not_handed_back(eager: bool) -> None:
    """A task the loop's factory ran to its end at once (``asyncio.eager_task_factory``) is not
    handed back, so nobody keeps track of it (the channel would keep it forever). (asyncio's
    loop only: uvloop 0.23's ``create_task`` cannot call that factory.)"""
    ran: list[str] = []

    async def body() -> None:
        ran.append("ran")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
        try:
            task = await _from_a_loop_callback(lambda: start_task(loop, body(), eager=eager))
        finally:
            loop.set_task_factory(None)
        assert ran == ["ran"]
        assert task is None

    asyncio.run(scenario())
