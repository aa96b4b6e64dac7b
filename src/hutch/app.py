"""``hutch.App``: declare tasks and RPC functions once, serve them with ``hutch worker``.

::

    app = hutch.App()

    @app.task(retry=Retry(attempts=5))
    async def resize(*, path: str) -> None: ...

    @app.rpc
    async def multiply(*, x: int, y: int) -> int:
        return x * y

``hutch worker mymodule:app --url amqp://...`` serves both until SIGINT/SIGTERM. In a program,
``serving = await app.serve(connection)`` does the same and ``await serving.close()`` stops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from hutch.abc import Connection
from hutch.patterns.master import Master, Retry, Worker
from hutch.patterns.rpc import RPC

log = logging.getLogger("hutch")

F = TypeVar("F", bound=Callable[..., Any])
Hook = Callable[[Connection], Awaitable[None]]

DEFAULT_CONCURRENCY = 32


@dataclass(frozen=True)
class TaskSpec:
    """A task the app serves: its name (= queue), handler and worker options."""

    name: str
    func: Callable[..., Any]
    concurrency: int | None = None
    retry: Retry | None = None
    queue_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RPCSpec:
    """An RPC function the app serves: its name and handler."""

    name: str
    func: Callable[..., Any]
    concurrency: int | None = None


def _default_name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if not name or "<" in name:
        raise ValueError(
            f"cannot take a name from {func!r}; pass one explicitly, e.g. @app.task(name='resize')"
        )
    return str(name)


class App:
    """A set of tasks and RPC functions that ``hutch worker`` (or ``App.serve``) serves.

    Args:
        concurrency: how many tasks (per task name) and calls (per RPC name) run at once by
            default; a decorator's ``concurrency=`` or ``hutch worker --concurrency`` overrides it.
    """

    def __init__(self, *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        _check_concurrency(concurrency)
        self.concurrency = concurrency
        self.tasks: dict[str, TaskSpec] = {}
        self.rpcs: dict[str, RPCSpec] = {}
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []

    def __repr__(self) -> str:
        return f"<hutch.App tasks={sorted(self.tasks)} rpc={sorted(self.rpcs)}>"

    @overload
    def task(self, func: F, /) -> F: ...

    @overload
    def task(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        concurrency: int | None = None,
        retry: Retry | None = None,
        **queue_options: Any,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        concurrency: int | None = None,
        retry: Retry | None = None,
        **queue_options: Any,
    ) -> Any:
        """Register a task handler; its name (and queue) defaults to the function's qualified
        name. ``queue_options`` (``durable``, ``arguments``, ...) go to the queue declaration."""

        def register(target: Callable[..., Any]) -> Callable[..., Any]:
            task_name = name or _default_name(target)
            if concurrency is not None:
                _check_concurrency(concurrency)
            if task_name in self.tasks:
                raise ValueError(f"a task named {task_name!r} is already registered on this app")
            self.tasks[task_name] = TaskSpec(
                task_name, target, concurrency, retry, dict(queue_options)
            )
            return target

        return register(func) if func is not None else register

    @overload
    def rpc(self, func: F, /) -> F: ...

    @overload
    def rpc(
        self, func: None = None, /, *, name: str | None = None, concurrency: int | None = None
    ) -> Callable[[F], F]: ...

    def rpc(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        concurrency: int | None = None,
    ) -> Any:
        """Register an RPC function; its name defaults to the function's qualified name."""

        def register(target: Callable[..., Any]) -> Callable[..., Any]:
            rpc_name = name or _default_name(target)
            if concurrency is not None:
                _check_concurrency(concurrency)
            if rpc_name in self.rpcs:
                raise ValueError(f"an RPC function named {rpc_name!r} is already registered")
            self.rpcs[rpc_name] = RPCSpec(rpc_name, target, concurrency)
            return target

        return register(func) if func is not None else register

    def on_startup(self, hook: Hook) -> Hook:
        """Run ``await hook(connection)`` when serving starts, before any consumer."""
        self._startup.append(hook)
        return hook

    def on_shutdown(self, hook: Hook) -> Hook:
        """Run ``await hook(connection)`` after serving stopped."""
        self._shutdown.append(hook)
        return hook

    async def serve(self, connection: Connection, *, concurrency: int | None = None) -> Serving:
        """Start a worker for every task and a callee for every RPC function.

        ``concurrency`` overrides every handler's own (``hutch worker --concurrency``).
        """
        if concurrency is not None:
            _check_concurrency(concurrency)
        if not self.tasks and not self.rpcs:
            raise ValueError("this app has no @app.task or @app.rpc functions to serve")
        serving = Serving(self, connection)
        try:
            for hook in self._startup:
                await hook(connection)
            channel = await connection.channel()
            serving._channel = channel
            master = Master(channel)
            for spec in self.tasks.values():
                serving._workers.append(
                    await master.create_worker(
                        spec.name,
                        spec.func,
                        prefetch_count=concurrency or spec.concurrency or self.concurrency,
                        retry=spec.retry,
                        **spec.queue_options,
                    )
                )
            for rpc_spec in self.rpcs.values():
                rpc = await RPC.create(
                    channel,
                    concurrency=concurrency or rpc_spec.concurrency or self.concurrency,
                )
                await rpc.register(rpc_spec.name, rpc_spec.func)
                serving._rpcs.append(rpc)
        except BaseException:
            await serving.close()
            raise
        return serving


class Serving:
    """The workers and callees ``App.serve`` started; ``close()`` stops them gracefully."""

    def __init__(self, app: App, connection: Connection) -> None:
        self.app = app
        self.connection = connection
        self._workers: list[Worker] = []
        self._rpcs: list[RPC] = []
        self._channel: Any = None
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Tasks and calls being handled right now."""
        # (RPC.in_flight counts an object's own calls waiting for replies, not those it serves.)
        return sum(w.in_flight for w in self._workers) + sum(len(r._serving) for r in self._rpcs)

    async def close(self) -> None:
        """Stop consuming, let the handlers in flight finish (each worker within its bound),
        then run the shutdown hooks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(
            *(worker.close() for worker in self._workers),
            *(rpc.close() for rpc in self._rpcs),
            return_exceptions=True,
        )
        if self._channel is not None:
            await self._channel.close()
        for hook in self.app._shutdown:
            try:
                await hook(self.connection)
            except Exception:
                log.exception("a shutdown hook raised")


def _check_concurrency(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"concurrency must be a whole number, 1 or more, not {value!r}")
