"""``hutch.App`` and the command's argument parsing, without a broker process."""

from __future__ import annotations

import asyncio

import pytest
from pamqp import commands as spec

import hutch
import hutch.patterns
from hutch.app import App
from hutch.cli import CommandError, _call, build_parser, parse_arguments
from hutch.patterns import Master, Retry
from tests.support.fake_amqp import FakeBroker, FakeConnection, handshake_and_serve


async def resize(*, path: str) -> None:
    """A module-level handler: its qualified name is its name."""


class Images:
    @staticmethod
    async def thumbnail(*, path: str) -> None:
        """A method: its qualified name carries the class."""


def test_names_default_to_the_functions_qualified_name() -> None:
    """``@app.task`` and ``@app.rpc`` name a handler after ``__qualname__`` unless told."""
    app = App()
    app.task(resize)
    app.task(Images.thumbnail)
    app.rpc(name="math.multiply", concurrency=4)(resize)
    assert list(app.tasks) == ["resize", "Images.thumbnail"]
    assert app.rpcs["math.multiply"].func is resize
    assert app.rpcs["math.multiply"].concurrency == 4


def test_registering_a_name_twice_is_an_error() -> None:
    """Two handlers for one name would split its queue silently: refuse."""
    app = App()
    app.task(name="t")(lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        app.task(name="t")(lambda: None)


def test_a_lambda_or_local_function_needs_an_explicit_name() -> None:
    """``<lambda>`` or ``f.<locals>.g`` is not a usable queue name: ask for one."""
    with pytest.raises(ValueError, match="pass one explicitly"):
        App().task(lambda: None)

    def local() -> None: ...

    with pytest.raises(ValueError, match="pass one explicitly"):
        App().rpc(local)


def test_concurrency_must_be_a_positive_integer() -> None:
    """Bad concurrency is a ValueError when declared, not a broker error later."""
    with pytest.raises(ValueError, match="concurrency"):
        App(concurrency=0)
    with pytest.raises(ValueError, match="concurrency"):
        App().task(name="t", concurrency=-1)(lambda: None)


async def test_serve_runs_tasks_and_rpc_on_the_embedded_broker() -> None:
    """``App.serve`` starts a worker per task and a callee per function; ``close`` stops them
    and runs the shutdown hooks."""
    app = App()
    seen: list[int] = []
    done = asyncio.Event()
    events: list[str] = []

    @app.task(name="app.note", retry=Retry(attempts=0))
    async def note(*, n: int) -> None:
        seen.append(n)
        if len(seen) == 3:
            done.set()

    @app.rpc(name="app.add")
    def add(*, a: int, b: int) -> int:  # a plain function: runs in a thread
        return a + b

    @app.on_startup
    async def started(connection: hutch.Connection) -> None:
        events.append("startup")

    @app.on_shutdown
    async def stopped(connection: hutch.Connection) -> None:
        events.append("shutdown")

    async with await hutch.connect("memory://test-app-serve") as connection:
        serving = await app.serve(connection)
        channel = await connection.channel()
        await Master(channel).create_tasks("app.note", [{"n": 1}, {"n": 2}, {"n": 3}])
        rpc = await hutch.patterns.RPC.create(channel)
        assert await rpc.proxy.app.add(a=2, b=3) == 5
        await asyncio.wait_for(done.wait(), 5)
        await rpc.close()
        await serving.close()
    assert sorted(seen) == [1, 2, 3]
    assert events == ["startup", "shutdown"]


async def test_serving_in_flight_counts_the_rpc_calls_being_served() -> None:
    """``Serving.in_flight`` counts the RPC calls its callees are running, not only tasks."""
    app = App()
    started = asyncio.Event()
    release = asyncio.Event()

    @app.rpc(name="app.slow")
    async def slow() -> None:
        started.set()
        await release.wait()

    async with await hutch.connect("memory://test-app-in-flight") as connection:
        serving = await app.serve(connection)
        rpc = await hutch.patterns.RPC.create(await connection.channel())
        call = asyncio.ensure_future(rpc.proxy.app.slow())
        await asyncio.wait_for(started.wait(), 5)
        assert serving.in_flight == 1
        release.set()
        await asyncio.wait_for(call, 5)
        assert serving.in_flight == 0
        await rpc.close()
        await serving.close()


async def test_serving_an_empty_app_is_an_error() -> None:
    """An app with nothing to serve is a mistake worth saying out loud."""
    async with await hutch.connect("memory://test-app-empty") as connection:
        with pytest.raises(ValueError, match=r"no @app\.task or @app\.rpc"):
            await App().serve(connection)


async def test_call_command_reports_a_lost_connection_as_such_not_as_a_remote_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``hutch call`` lets a ConnectionLost through to the one-line error report instead of
    printing it as an error the remote function raised."""

    async def hook(conn: FakeConnection, channel: int, method: object) -> bool:
        if isinstance(method, spec.Basic.Publish) and method.routing_key == "f":
            conn.hang_up()
            return True
        return False

    async with FakeBroker(handshake_and_serve(hook)) as broker:
        args = build_parser().parse_args(["call", "f", "--url", broker.url()])
        with pytest.raises(hutch.ConnectionLost):
            await asyncio.wait_for(_call(args), 10)
    assert "remote error" not in capsys.readouterr().err


def test_key_value_arguments_are_json_when_they_parse() -> None:
    """``x=3`` is the number 3, ``name=alice`` the text "alice", ``--json`` merges under."""
    assert parse_arguments(["x=3", "name=alice", 'l=[1, "a"]', "t=true"], '{"y": 1, "x": 0}') == {
        "x": 3,
        "y": 1,
        "name": "alice",
        "l": [1, "a"],
        "t": True,
    }


@pytest.mark.parametrize(
    ("pairs", "json_text", "message"),
    [
        (["novalue"], None, "not key=value"),
        (["1x=2"], None, "not key=value"),
        ([], "[1]", "JSON object"),
        ([], "{", "not valid JSON"),
    ],
)
def test_bad_arguments_say_what_is_wrong(
    pairs: list[str], json_text: str | None, message: str
) -> None:
    """Malformed command-line arguments raise a one-line error naming the problem."""
    with pytest.raises(CommandError, match=message):
        parse_arguments(pairs, json_text)
