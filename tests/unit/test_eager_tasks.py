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
