"""The ``hutch`` command: ``demo``, ``worker``, ``call`` and ``send``.

Errors a person can act on (an unreachable broker, a bad URL, a module that does not import, an
unknown task or function) print one line saying what went wrong and what to try; ``--debug``
shows the traceback. The command runs on uvloop when it is installed (``hutch[uvloop]``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from hutch._connect import connect_robust
from hutch.exceptions import (
    CallTimeout,
    HutchConnectionError,
    HutchError,
    RemoteError,
    Unroutable,
)

DEFAULT_URL = "amqp://guest:guest@localhost/"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A failure to report in one line (and exit 1)."""


def _url(args: argparse.Namespace, default: str = DEFAULT_URL) -> str:
    return str(args.url or os.environ.get("HUTCH_URL") or default)


def _shared_url(args: argparse.Namespace) -> str:
    """The URL for a command that talks to other processes: not the in-process broker."""
    url = _url(args)
    if url.startswith("memory://"):
        raise CommandError(
            f"hutch {args.command} needs a broker other processes can reach; the embedded "
            "memory:// broker lives inside one process (use --url amqp://... or HUTCH_URL)"
        )
    return url


def parse_arguments(pairs: Sequence[str], json_text: str | None) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as JSON when they are JSON, else kept as text),
    merged over ``--json``'s object."""
    kwargs: dict[str, Any] = {}
    if json_text:
        try:
            loaded = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise CommandError("--json must be a JSON object, e.g. --json '{\"x\": 1}'")
        kwargs.update(loaded)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise CommandError(f"argument {pair!r} is not key=value (e.g. x=3 or name=alice)")
        try:
            kwargs[key] = json.loads(text)
        except json.JSONDecodeError:
            kwargs[key] = text
    return kwargs


def load_app(target: str) -> Any:
    """Import ``module:attribute`` (``attribute`` defaults to ``app``)."""
    from hutch.app import App

    module_name, _, attribute = target.partition(":")
    attribute = attribute or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(
            f"cannot import module {module_name!r}: {exc}; run hutch from the folder that "
            "holds it, or add that folder to PYTHONPATH"
        ) from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        raise CommandError(
            f"{module_name}:{attribute} is not a hutch.App (found {type(app).__name__}); "
            "name it as module:variable, e.g. tasks:app"
        )
    return app


async def _worker(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    url = _shared_url(args)
    connection = await connect_robust(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        serving = await app.serve(connection, concurrency=args.concurrency)
        names = ", ".join([*app.tasks, *app.rpcs])
        print(f"hutch worker: serving {names} on {connection.url} (Ctrl-C to stop)", flush=True)
        await stop.wait()
        print("hutch worker: stopping; finishing the tasks in flight", flush=True)
        await serving.close()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await connection.close()
    print("hutch worker: stopped", flush=True)
    return EXIT_OK


async def _call(args: argparse.Namespace) -> int:
    from hutch.patterns.rpc import RPC

    kwargs = parse_arguments(args.arguments, args.json)
    url = _shared_url(args)
    async with await connect_robust(url, initial_connect_timeout=args.connect_timeout) as conn:
        channel = await conn.channel()
        rpc = await RPC.create(channel)
        try:
            result = await rpc.call(args.name, kwargs=kwargs, timeout=args.timeout)
        except RemoteError as exc:
            print(f"remote error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except Unroutable as exc:
            raise CommandError(
                f"no function named {args.name!r} is served at {conn.url}; start a worker that "
                f"registers it (hutch worker module:app) — {exc}"
            ) from exc
        except CallTimeout as exc:
            raise CommandError(f"{exc}; raise --timeout if the function is slow") from exc
        except HutchError:
            raise  # ours (a lost connection, an unreadable reply), not the function's
        except Exception as exc:  # a re-created builtin exception from the callee
            print(f"remote error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            await rpc.close()
    print(json.dumps(result, ensure_ascii=False))
    return EXIT_OK


async def _send(args: argparse.Namespace) -> int:
    from hutch.patterns.master import Master

    kwargs = parse_arguments(args.arguments, args.json)
    url = _shared_url(args)
    async with await connect_robust(url, initial_connect_timeout=args.connect_timeout) as conn:
        channel = await conn.channel()
        try:
            await Master(channel).create_task(args.name, kwargs=kwargs)
        except Unroutable as exc:
            raise CommandError(
                f"no queue named {args.name!r} at {conn.url}; start a worker that serves the "
                "task (hutch worker module:app) so its queue exists"
            ) from exc
    print(f"sent {args.name}", file=sys.stderr)
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from hutch._demo import run_demo

    return await run_demo(
        url=_url(args, default="memory://"),
        tasks=args.tasks,
        calls=args.calls,
        workers=args.workers,
        failing=args.failing,
        debug=args.debug,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hutch", description="Master/Worker and RPC over RabbitMQ (or the embedded broker)."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def url_option(sub: argparse.ArgumentParser, default: str) -> None:
        sub.add_argument("--url", help=f"broker URL (default: $HUTCH_URL or {default})")

    demo = commands.add_parser("demo", help="run tasks and calls end to end and show the numbers")
    url_option(demo, "memory://")
    demo.add_argument("--tasks", type=int, default=3000, help="tasks to send (default 3000)")
    demo.add_argument("--calls", type=int, default=3000, help="RPC calls to make (default 3000)")
    demo.add_argument("--failing", type=int, default=3, help="tasks that always fail (default 3)")
    demo.add_argument(
        "--workers", type=int, default=2, help="worker processes on RabbitMQ (default 2)"
    )

    worker = commands.add_parser("worker", help="serve the tasks and functions of an App")
    worker.add_argument("app", help="module:attribute of a hutch.App, e.g. tasks:app")
    url_option(worker, DEFAULT_URL)
    worker.add_argument("--concurrency", type=int, help="tasks/calls at once per name")

    for name, text in (
        ("call", "call an RPC function and print its result as JSON"),
        ("send", "enqueue a task"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("name", help="the function or task name")
        sub.add_argument("arguments", nargs="*", help="key=value keyword arguments")
        sub.add_argument("--json", help="keyword arguments as a JSON object")
        url_option(sub, DEFAULT_URL)
        sub.add_argument(
            "--connect-timeout", type=float, default=5.0, help="seconds to reach the broker"
        )
        if name == "call":
            sub.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "demo": _demo,
    "worker": _worker,
    "call": _call,
    "send": _send,
}


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.run(coro)
    return int(uvloop.run(coro))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hutch`` command; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # A worker's operator wants its warnings (reconnects); one-shot commands say it in one line.
    quiet = logging.WARNING if args.command == "worker" else logging.ERROR
    logging.basicConfig(
        level=logging.DEBUG if args.debug else quiet,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return _run(COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return 130
    except (CommandError, HutchError, ValueError, TypeError) as exc:
        if args.debug:
            raise
        print(f"hutch {args.command}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, HutchConnectionError):
        text = str(exc).split(" (gave up after", 1)[0]
        return f"{text} (set --url or HUTCH_URL to your broker)"
    if isinstance(exc, ValueError) and "URL" in str(exc):
        return f"bad broker URL: {exc}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
