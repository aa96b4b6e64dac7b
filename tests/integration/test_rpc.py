"""RPC against a broker: results, errors, deadlines, expiry, concurrency, closing.

Each test runs against the real RabbitMQ the suite starts and against the embedded broker
(``memory://``): the ``url`` fixture.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import uvloop

import hutch
from hutch.memory import get_broker
from hutch.patterns import RPC, MsgpackRPC, PickleRPC, UnsafeSerializerWarning
from tests.support.rpc import FirstCallWaits, Gate, observe_dead_letters

WAIT = 10  # bound on waits for events that should come at once


@pytest.fixture(params=["amqp", "memory"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A broker URL: the suite's RabbitMQ, or an embedded broker of the test's own."""
    if request.param == "amqp":
        yield str(request.getfixturevalue("amqp_url"))
        return
    broker = f"rpc-{uuid.uuid4().hex}"
    yield f"memory://{broker}"
    get_broker(broker).reset()


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[hutch.Connection]:
    connection = await hutch.connect(url)
    try:
        yield connection
    finally:
        await connection.close()


@asynccontextmanager
async def rpc_pair(url: str, **options: Any) -> AsyncIterator[tuple[RPC, RPC]]:
    """A caller and a callee RPC object, each on a connection of its own."""
    async with connected(url) as c1, connected(url) as c2:
        caller = await RPC.create(await c1.channel(), **options)
        callee = await RPC.create(await c2.channel(), **options)
        try:
            yield caller, callee
        finally:
            await caller.close()
            await callee.close()


async def multiply(*, x: int, y: int) -> int:
    return x * y


# -- results ---------------------------------------------------------------------------------


async def test_call_and_proxy_return_the_result(url: str, name: str) -> None:
    """``call(name, kwargs)`` and ``proxy.<name>(**kwargs)`` return what the function returned."""
    async with rpc_pair(url) as (caller, callee):
        await callee.register(name, multiply, auto_delete=True)
        assert await caller.call(name, kwargs={"x": 6, "y": 7}) == 42
        assert await getattr(caller.proxy, name)(x=3, y=5) == 15


async def test_proxy_attribute_chain_names_a_dotted_method(url: str, name: str) -> None:
    """``proxy.a.b(...)`` calls the function registered as ``"a.b"``."""
    async with rpc_pair(url) as (caller, callee):
        await callee.register(f"{name}.sub", multiply, auto_delete=True)
        assert await getattr(caller.proxy, name).sub(x=2, y=2) == 4


async def test_replies_match_calls_by_correlation_id_with_many_in_flight(
    url: str, name: str
) -> None:
    """Many calls in flight on one RPC object each get their own result, though replies
    arrive in the reverse order of the calls."""
    count = 20
    gates = [asyncio.Event() for _ in range(count)]
    started = 0
    all_started = asyncio.Event()

    async def echo(*, i: int) -> int:
        nonlocal started
        started += 1
        if started == count:
            all_started.set()
        await gates[i].wait()
        return i * 10

    async with rpc_pair(url, concurrency=count) as (caller, callee):
        await callee.register(name, echo, auto_delete=True)
        calls = [asyncio.ensure_future(caller.call(name, {"i": i})) for i in range(count)]
        await asyncio.wait_for(all_started.wait(), WAIT)
        assert caller.in_flight == count
        for i in reversed(range(count)):
            gates[i].set()
            await asyncio.sleep(0)
        assert await asyncio.wait_for(asyncio.gather(*calls), WAIT) == [
            i * 10 for i in range(count)
        ]
        assert caller.in_flight == 0


async def test_two_rpc_objects_on_one_channel_both_work(url: str, name: str) -> None:
    """Creating RPC twice on one channel is fine: both call; closing one leaves the other
    working."""
    async with connected(url) as connection:
        channel = await connection.channel()
        first = await RPC.create(channel)
        second = await RPC.create(channel)
        await first.register(name, multiply, auto_delete=True)
        results = await asyncio.gather(
            first.call(name, {"x": 1, "y": 2}), second.call(name, {"x": 3, "y": 4})
        )
        assert results == [2, 12]
        await second.close()
        await second.close()  # idempotent
        assert await first.call(name, {"x": 5, "y": 5}) == 25
        await first.close()


async def test_call_message_carries_the_aio_pika_properties_and_expiration(
    url: str, name: str
) -> None:
    """A call is published as aio-pika's: type "call", a correlation id, reply_to, priority 5,
    content type, transient, and an expiration equal to the timeout (or ``expiration=``; none
    with ``timeout=None``)."""
    async with connected(url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(name, auto_delete=True)
        seen: asyncio.Queue[hutch.IncomingMessage] = asyncio.Queue()
        await channel.consume(name, seen.put_nowait, no_ack=True)
        rpc = await RPC.create(await connection.channel(), timeout=0.5)
        with pytest.raises(hutch.CallTimeout):
            await rpc.call(name, {"x": 1})
        with pytest.raises(hutch.CallTimeout):
            await rpc.call(name, {"x": 2}, timeout=0.3, expiration=7, priority=2)
        forever = asyncio.ensure_future(rpc.call(name, {"x": 3}, timeout=None))
        first = await asyncio.wait_for(seen.get(), WAIT)
        second = await asyncio.wait_for(seen.get(), WAIT)
        third = await asyncio.wait_for(seen.get(), WAIT)
        assert third.expiration is None
        forever.cancel()
        assert first.type == "call"
        assert first.content_type == "application/json"
        assert first.body == b'{"x": 1}'
        assert first.reply_to
        assert first.correlation_id
        assert first.correlation_id != second.correlation_id
        assert first.priority == 5
        assert first.delivery_mode == 1
        assert first.expiration == 0.5
        assert second.expiration == 7
        assert second.priority == 2
        await rpc.close()


async def test_bad_call_arguments_are_refused_before_anything_is_sent(url: str, name: str) -> None:
    """Unserializable kwargs, a non-dict kwargs and a priority outside 0-255 raise at once,
    leaving no pending call."""
    async with connected(url) as connection:
        rpc = await RPC.create(await connection.channel())
        with pytest.raises(TypeError, match="cannot be serialized"):
            await rpc.call(name, {"x": object()})
        with pytest.raises(TypeError, match="dict of keyword arguments"):
            await rpc.call(name, [1, 2])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="priority"):
            await rpc.call(name, priority=300)
        assert rpc.in_flight == 0
        await rpc.close()


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (AssertionError("no"), AssertionError),
        (KeyError("missing"), KeyError),
        (TypeError("bad", 2), TypeError),
        (ZeroDivisionError("division by zero"), ZeroDivisionError),
        (FileNotFoundError(2, "No such file"), FileNotFoundError),
    ],
)
async def test_builtin_exceptions_are_raised_as_themselves(
    url: str, name: str, exc: Exception, kind: type[Exception]
) -> None:
    """A builtin exception in the callee is raised in the caller as the same type with the
    same args, and carries the remote traceback as a note."""

    async def fail() -> None:
        raise exc

    async with rpc_pair(url) as (caller, callee):
        await callee.register(name, fail, auto_delete=True)
        with pytest.raises(kind) as info:
            await caller.call(name)
    assert type(info.value) is kind
    assert info.value.args == exc.args
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "Traceback" in notes
    assert "in fail" in notes


class Overdrawn(Exception):
    """A user's exception class."""


async def test_listed_exception_classes_are_raised_as_themselves(url: str, name: str) -> None:
    """An exception class given in ``exceptions=`` comes back as itself; without it, as a
    ``RemoteError`` naming the type and carrying the remote traceback."""

    def withdraw(*, amount: int) -> None:
        raise Overdrawn("balance too low", amount)

    async with connected(url) as connection:
        channel = await connection.channel()
        callee = await RPC.create(channel)
        knowing = await RPC.create(channel, exceptions=[Overdrawn])
        await callee.register(name, withdraw, auto_delete=True)
        with pytest.raises(Overdrawn) as known:
            await knowing.call(name, {"amount": 5})
        assert known.value.args == ("balance too low", 5)
        with pytest.raises(hutch.RemoteError) as unknown:
            await callee.call(name, {"amount": 5})
        assert unknown.value.type == "Overdrawn"
        assert unknown.value.args_ == ["balance too low", 5]
        assert "in withdraw" in unknown.value.remote_traceback
        assert "Overdrawn" in str(unknown.value)
        await knowing.close()
        await callee.close()


async def test_unserializable_result_comes_back_as_an_error(url: str, name: str) -> None:
    """A result the serializer cannot encode fails the call with a TypeError saying so."""

    async def give_object() -> object:
        return object()

    async with rpc_pair(url) as (caller, callee):
        await callee.register(name, give_object, auto_delete=True)
        with pytest.raises(TypeError, match="cannot be serialized"):
            await caller.call(name)
        # the callee keeps serving
        await callee.register(f"{name}.ok", multiply, auto_delete=True)
        assert await caller.call(f"{name}.ok", {"x": 1, "y": 1}) == 1


async def test_bad_arguments_come_back_as_a_type_error(url: str, name: str) -> None:
    """Calling with keyword arguments the function does not take raises its TypeError."""
    async with rpc_pair(url) as (caller, callee):
        await callee.register(name, multiply, auto_delete=True)
        with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
            await caller.call(name, {"x": 1, "y": 2, "z": 3})


# -- deadlines -------------------------------------------------------------------------------


async def test_default_timeout_raises_call_timeout_and_leaves_nothing_behind(
    url: str, name: str
) -> None:
    """A call with no reply within the RPC object's timeout raises CallTimeout (a
    TimeoutError) and leaves no pending call behind."""
    release = asyncio.Event()

    async def hang() -> None:
        await release.wait()

    async with rpc_pair(url, timeout=0.2) as (caller, callee):
        await callee.register(name, hang, auto_delete=True)
        with pytest.raises(TimeoutError) as info:
            await caller.call(name)
        assert isinstance(info.value, hutch.CallTimeout)
        assert caller.in_flight == 0
        release.set()


async def test_timeout_none_waits_past_the_default_deadline(url: str, name: str) -> None:
    """``timeout=None`` outlives the object's deadline."""
    release = asyncio.Event()

    async def hang() -> str:
        await release.wait()
        return "done"

    async with rpc_pair(url, timeout=0.2, concurrency=2) as (caller, callee):
        await callee.register(name, hang, auto_delete=True)
        patient = asyncio.ensure_future(caller.call(name, timeout=None))
        with pytest.raises(hutch.CallTimeout):
            await caller.call(name)  # began later, with the default deadline
        assert not patient.done()
        release.set()
        assert await asyncio.wait_for(patient, WAIT) == "done"


async def _short_deadline_after_a_long_one(url: str, name: str) -> None:
    release = asyncio.Event()

    async def hang(*, n: int) -> int:
        await release.wait()
        return n

    async with rpc_pair(url, concurrency=2) as (caller, callee):
        await callee.register(name, hang, auto_delete=True)
        patient = asyncio.ensure_future(caller.call(name, {"n": 1}, timeout=60))
        with pytest.raises(hutch.CallTimeout, match=r"within 0\.2 s"):
            # wait_for's own TimeoutError is no CallTimeout: it would fail this test
            await asyncio.wait_for(caller.call(name, {"n": 2}, timeout=0.2), WAIT)
        assert not patient.done()
        release.set()
        assert await asyncio.wait_for(patient, WAIT) == 1


async def _calls_waiting_together(url: str, name: str) -> None:
    release = asyncio.Event()

    async def hang(*, n: int) -> None:
        await release.wait()

    async with rpc_pair(url, concurrency=3) as (caller, callee):
        await callee.register(name, hang, auto_delete=True)
        calls = [
            asyncio.ensure_future(caller.call(name, {"n": n}, timeout=timeout))
            for n, timeout in enumerate((0.3, 0.1, 0.2))
        ]
        ended: list[int] = []
        for n, call in enumerate(calls):
            call.add_done_callback(lambda _call, n=n: ended.append(n))
        done, _ = await asyncio.wait(calls, timeout=WAIT)
        assert len(done) == 3
        assert all(isinstance(call.exception(), hutch.CallTimeout) for call in calls)
        assert ended == [1, 2, 0]  # in the order of their deadlines
        assert caller.in_flight == 0
        release.set()


async def _many_short_deadlines(url: str, name: str) -> None:
    release = asyncio.Event()

    async def hang(*, i: int) -> None:
        await release.wait()

    async with rpc_pair(url, concurrency=100) as (caller, callee):
        await callee.register(name, hang, auto_delete=True)

        async def one_caller(i: int) -> list[str]:
            outcomes = []
            for _ in range(4):
                try:
                    await caller.call(name, {"i": i}, timeout=0.02 + i * 0.0003)
                except hutch.CallTimeout:
                    outcomes.append("timeout")
                else:
                    outcomes.append("reply")
            return outcomes

        results = await asyncio.wait_for(asyncio.gather(*(one_caller(i) for i in range(12))), WAIT)
        assert [set(r) for r in results] == [{"timeout"}] * 12
        assert caller.in_flight == 0
        release.set()


async def test_a_short_deadline_begun_after_a_long_one_ends_on_time(url: str, name: str) -> None:
    """Each call ends at its own deadline: a call with a short timeout, made while one with a
    long timeout waits, times out after its own timeout; the long one keeps waiting."""
    await _short_deadline_after_a_long_one(url, name)


async def test_calls_waiting_together_each_time_out(url: str, name: str) -> None:
    """Several calls with different timeouts waiting at once all end with CallTimeout, in the
    order of their deadlines."""
    await _calls_waiting_together(url, name)


async def test_many_short_deadlines_each_end_in_call_timeout(url: str, name: str) -> None:
    """Many calls with short, close deadlines in flight at once each end with CallTimeout and
    nothing else, and leave no pending call behind."""
    await _many_short_deadlines(url, name)


def test_deadlines_hold_on_uvloop(url: str, name: str) -> None:
    """The deadline scenarios above pass on uvloop too, whose timers are rounded to whole
    milliseconds (they may fire a little early, and one due in under half a millisecond is a
    plain handle)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_short_deadline_after_a_long_one(url, f"{name}.a"))
        runner.run(_calls_waiting_together(url, f"{name}.b"))
        runner.run(_many_short_deadlines(url, f"{name}.c"))


async def test_late_reply_is_dropped_quietly(
    url: str, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply that arrives after its call timed out is dropped with a debug log only."""
    release = asyncio.Event()

    async def slow(*, n: int) -> int:
        if n == 0:
            await release.wait()
        return n

    caplog.set_level(logging.DEBUG, logger="hutch")
    async with rpc_pair(url, concurrency=1) as (caller, callee):
        await callee.register(name, slow, auto_delete=True)
        with pytest.raises(hutch.CallTimeout):
            await caller.call(name, {"n": 0}, timeout=0.2, expiration=60)
        release.set()
        # One callee at concurrency 1 replies in order: the late reply came before this one.
        assert await caller.call(name, {"n": 1}) == 1
    dropped = [r for r in caplog.records if "dropping a reply" in r.getMessage()]
    assert len(dropped) == 1
    assert dropped[0].levelno == logging.DEBUG
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_cancelled_call_leaves_no_pending_future(url: str, name: str) -> None:
    """Cancelling a waiting call removes it; its reply, when it comes, is dropped."""
    slow = Gate()

    async with rpc_pair(url, concurrency=1) as (caller, callee):
        await callee.register(name, slow, auto_delete=True)
        task = asyncio.ensure_future(caller.call(name))
        await asyncio.wait_for(slow.started.wait(), WAIT)
        assert caller.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert caller.in_flight == 0
        slow.release.set()
        await callee.register(f"{name}.next", multiply, auto_delete=True)
        assert await caller.call(f"{name}.next", {"x": 2, "y": 3}) == 6


async def test_callee_does_not_run_a_call_that_expired_waiting(url: str, name: str) -> None:
    """A call whose deadline passed while it waited in the queue is dropped by the broker
    (dead-lettered to rpc.dlx), never run."""
    work = FirstCallWaits()

    async with rpc_pair(url, concurrency=1) as (caller, callee):
        await callee.register(name, work, auto_delete=True)
        observed = await observe_dead_letters(caller.channel, name)
        first = asyncio.ensure_future(caller.call(name, {"n": 1}))
        await asyncio.wait_for(work.started.wait(), WAIT)
        with pytest.raises(hutch.CallTimeout):
            await caller.call(name, {"n": 2}, timeout=0.2)
        expired = await asyncio.wait_for(observed.get(), WAIT)
        assert expired.type == "call"
        assert expired.body == b'{"n": 2}'
        work.release.set()
        assert await first == 1
        assert await caller.call(name, {"n": 3}) == 3
    assert work.ran == [1, 3]


async def test_queue_reply_path_ends_an_expired_call_at_once(url: str, name: str) -> None:
    """With ``reply_path="queue"``, a call dead-lettered back on expiry raises CallTimeout
    though the call itself waits forever."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def block() -> None:
        started.set()
        await release.wait()

    async with rpc_pair(url, concurrency=1, reply_path="queue") as (caller, callee):
        await callee.register(name, block, auto_delete=True)
        first = asyncio.ensure_future(caller.call(name))
        await asyncio.wait_for(started.wait(), WAIT)
        with pytest.raises(hutch.CallTimeout, match="expired in its queue"):
            await asyncio.wait_for(caller.call(name, timeout=None, expiration=0.1), WAIT)
        assert caller.in_flight == 1
        release.set()
        assert await first is None


# -- routing ---------------------------------------------------------------------------------


async def test_call_to_an_unregistered_name_fails_at_once(url: str, name: str) -> None:
    """A call nobody registered raises Unroutable saying no callee is registered, well before
    its deadline."""
    async with connected(url) as connection:
        rpc = await RPC.create(await connection.channel(), timeout=None)
        with pytest.raises(hutch.Unroutable, match=f"no callee registered for '{name}'"):
            await asyncio.wait_for(rpc.call(name, {"x": 1}), WAIT)
        assert rpc.in_flight == 0
        await rpc.close()


async def test_unregistered_name_fails_at_once_without_publisher_confirms(
    url: str, name: str
) -> None:
    """On a channel without publisher confirms, a returned call still fails at once."""
    async with connected(url) as connection:
        channel = await connection.channel(publisher_confirms=False)
        rpc = await RPC.create(channel, timeout=None)
        with pytest.raises(hutch.Unroutable, match="no callee registered"):
            await asyncio.wait_for(rpc.call(name), WAIT)
        await rpc.register(name, multiply, auto_delete=True)
        assert await rpc.call(name, {"x": 2, "y": 2}) == 4
        await rpc.close()


async def test_custom_exchange_routes_to_exchange_prefixed_queues(url: str, name: str) -> None:
    """With ``exchange="ex"`` the callee's queue is ``"ex::name"``, bound to ``ex``, and calls
    go through that exchange."""
    exchange = f"{name}.ex"
    async with rpc_pair(url, exchange=exchange) as (caller, callee):
        await callee.register("multiply", multiply, auto_delete=True)
        assert await caller.proxy.multiply(x=4, y=4) == 16
        info = await caller.channel.queue_declare(f"{exchange}::multiply", passive=True)
        assert info.consumer_count == 1
        with pytest.raises(hutch.Unroutable, match="no callee registered for 'divide'"):
            await caller.call("divide", timeout=None)


async def test_call_after_the_custom_exchange_was_auto_deleted(url: str, name: str) -> None:
    """When the last callee leaves, the broker auto-deletes the custom exchange (aio-pika's
    topology); a call then fails at once saying no callee is registered."""
    exchange = f"{name}.ex"
    async with await hutch.connect_robust(url, reconnect_delay=0.1) as connection:
        caller = await RPC.create(await connection.channel(), exchange=exchange, timeout=None)
        callee = await RPC.create(await connection.channel(), exchange=exchange)
        await callee.register("m", multiply, auto_delete=True)
        assert await caller.call("m", {"x": 2, "y": 2}) == 4
        await callee.close()
        with pytest.raises(hutch.NotFound, match=f"'m' failed: exchange '{exchange}' does not"):
            await asyncio.wait_for(caller.call("m", {"x": 1, "y": 1}), WAIT)
        await caller.close()


async def test_a_channel_error_fails_the_calls_waiting_on_it_at_once(
    amqp_url: str, name: str
) -> None:
    """When the broker closes the calls' channel, a call already waiting for its reply fails at
    once, not at its deadline: its reply would go to a direct reply-to address that is gone.
    On a robust connection calls work again right after."""
    exchange = f"{name}.ex"
    slow = Gate()

    async with await hutch.connect_robust(amqp_url, reconnect_delay=0.1) as connection:
        caller = await RPC.create(await connection.channel(), exchange=exchange, timeout=60)
        callee = await RPC.create(await connection.channel(), exchange=exchange)
        await callee.register("slow", slow, auto_delete=True)
        waiting = asyncio.ensure_future(caller.call("slow"))
        await asyncio.wait_for(slow.started.wait(), WAIT)
        other = await connection.channel()
        await other.exchange_delete(exchange)
        with pytest.raises(hutch.NotFound, match="'m' failed: exchange"):
            await asyncio.wait_for(caller.call("m"), WAIT)
        with pytest.raises(hutch.NotFound, match="'slow' failed: exchange"):
            await asyncio.wait_for(waiting, WAIT)
        assert caller.in_flight == 0
        slow.release.set()
        await other.exchange_declare(exchange, "direct", auto_delete=True)
        await other.queue_bind(f"{exchange}::slow", exchange, f"{exchange}::slow")
        assert await asyncio.wait_for(caller.call("slow"), WAIT) == "late"
        await caller.close()
        await callee.close()


async def test_robust_channel_redeclares_the_auto_deleted_exchange(
    amqp_url: str, name: str
) -> None:
    """On a robust connection the caller's channel comes back after that 404 with the
    exchange declared again: the next call is a plain Unroutable."""
    exchange = f"{name}.ex"
    async with await hutch.connect_robust(amqp_url, reconnect_delay=0.1) as connection:
        caller = await RPC.create(await connection.channel(), exchange=exchange, timeout=None)
        callee = await RPC.create(await connection.channel(), exchange=exchange)
        await callee.register("m", multiply, auto_delete=True)
        await callee.close()
        with pytest.raises(hutch.NotFound):
            await asyncio.wait_for(caller.call("m", {"x": 1, "y": 1}), WAIT)
        with pytest.raises(hutch.Unroutable, match="no callee registered for 'm'"):
            await asyncio.wait_for(caller.call("m", {"x": 1, "y": 1}), WAIT)
        await caller.close()


async def test_unregister_stops_serving_the_name(url: str, name: str) -> None:
    """After ``unregister(func)`` the name has no callee; it can be registered again."""
    async with rpc_pair(url) as (caller, callee):
        await callee.register(name, multiply, auto_delete=True)
        assert await caller.call(name, {"x": 1, "y": 9}) == 9
        await callee.unregister(multiply)
        await callee.unregister(multiply)  # unknown now: ignored
        with pytest.raises(hutch.Unroutable):
            await caller.call(name, {"x": 1, "y": 9}, timeout=None)
        await callee.register(name, multiply, auto_delete=True)
        assert await caller.call(name, {"x": 2, "y": 9}) == 18


async def test_registering_a_name_or_function_twice_is_refused(url: str, name: str) -> None:
    """One name has one function per RPC object, and one function one name."""
    async with rpc_pair(url) as (_caller, callee):
        await callee.register(name, multiply, auto_delete=True)
        with pytest.raises(ValueError, match="already registered"):
            await callee.register(name, lambda: None, auto_delete=True)
        with pytest.raises(ValueError, match="already registered"):
            await callee.register(f"{name}.2", multiply, auto_delete=True)
        with pytest.raises(TypeError, match="unknown queue options"):
            await callee.register(f"{name}.3", print, auto_deleet=True)


async def test_call_without_reply_to_is_run_and_acked(url: str, name: str) -> None:
    """A call message with no reply_to runs and is acked; its result goes nowhere."""
    ran: list[int] = []

    async def note(*, n: int) -> int:
        ran.append(n)
        return n

    async with rpc_pair(url, concurrency=1) as (caller, callee):
        await callee.register(name, note, auto_delete=True)
        await caller.channel.publish(
            hutch.Message(b'{"n": 1}', content_type="application/json", type="call"), name
        )
        # At concurrency 1 the next call is delivered only once the first is acked.
        assert await caller.call(name, {"n": 2}) == 2
    assert ran == [1, 2]


# -- serving ---------------------------------------------------------------------------------


async def test_callee_concurrency_is_bounded(url: str, name: str) -> None:
    """A callee with ``concurrency=2`` holds at most two calls at once; the rest go to
    another callee of the name."""
    release = asyncio.Event()
    busy_started = 0
    both_busy = asyncio.Event()

    async def busy(*, n: int) -> str:
        nonlocal busy_started
        busy_started += 1
        if busy_started == 2:
            both_busy.set()
        await release.wait()
        return "busy"

    async def free(*, n: int) -> str:
        return "free"

    async with rpc_pair(url, concurrency=2) as (caller, callee):
        await callee.register(name, busy, auto_delete=True)
        held = [asyncio.ensure_future(caller.call(name, {"n": n})) for n in range(2)]
        await asyncio.wait_for(both_busy.wait(), WAIT)
        async with connected(url) as connection:
            other = await RPC.create(await connection.channel())
            await other.register(name, free, auto_delete=True)
            more = [caller.call(name, {"n": n}) for n in range(2, 6)]
            assert await asyncio.wait_for(asyncio.gather(*more), WAIT) == ["free"] * 4
            assert busy_started == 2
            await other.close()
        release.set()
        assert await asyncio.gather(*held) == ["busy", "busy"]


async def test_plain_functions_run_in_a_thread_pool(url: str, name: str) -> None:
    """A plain function runs off the event loop: while it blocks, other calls are served."""
    blocker = threading.Event()
    threads: list[int] = []

    def blocking(*, n: int) -> int:
        threads.append(threading.get_ident())
        blocker.wait(WAIT)
        return n

    async with rpc_pair(url) as (caller, callee):
        await callee.register(name, blocking, auto_delete=True)
        await callee.register(f"{name}.fast", multiply, auto_delete=True)
        slow = asyncio.ensure_future(caller.call(name, {"n": 7}))
        assert await caller.call(f"{name}.fast", {"x": 2, "y": 21}) == 42
        assert not slow.done()
        blocker.set()
        assert await slow == 7
    assert threads
    assert threading.get_ident() not in threads


async def test_close_fails_pending_calls_and_unsubscribes(url: str, name: str) -> None:
    """``close()`` fails waiting calls with ConnectionClosed, cancels the callee's consumers
    and the reply consumer, and can be called again."""
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    async with connected(url) as connection:
        channel = await connection.channel()
        caller = await RPC.create(channel)
        callee = await RPC.create(await connection.channel())
        await callee.register(name, hang)
        waiting = asyncio.ensure_future(caller.call(name))
        await asyncio.wait_for(started.wait(), WAIT)
        await caller.close()
        with pytest.raises(hutch.ConnectionClosed):
            await asyncio.wait_for(waiting, WAIT)
        assert caller.in_flight == 0
        with pytest.raises(hutch.ConnectionClosed):
            await caller.call(name)
        await callee.close(timeout=0.1)
        await callee.close()
        info = await channel.queue_declare(name, passive=True)
        assert info.consumer_count == 0
        # the reply consumer went with the channel the RPC object opened for its calls
        assert caller._caller_channel is not channel
        assert caller._caller_channel.is_closed
        await channel.queue_delete(name)


async def test_closing_the_given_channel_closes_the_rpc_calls_channel(url: str, name: str) -> None:
    """When the program closes the channel it gave ``RPC.create`` (without closing the RPC
    object), the channel the object opened for its calls closes too, so nothing is left
    consuming replies; a call waiting then fails at once, and later calls are refused."""
    slow = Gate()

    async with rpc_pair(url) as (caller, callee):
        await callee.register(name, slow, auto_delete=True)
        waiting = asyncio.ensure_future(caller.call(name))
        await asyncio.wait_for(slow.started.wait(), WAIT)
        await caller.channel.close()
        with pytest.raises(hutch.ConnectionClosed):
            await asyncio.wait_for(waiting, WAIT)
        assert caller._caller_channel is not caller.channel
        assert caller._caller_channel.is_closed
        with pytest.raises(hutch.ConnectionClosed):
            await caller.call(name)
        slow.release.set()


async def test_a_channel_error_leaves_calls_on_a_reply_queue_waiting_for_their_reply(
    amqp_url: str, name: str
) -> None:
    """With ``reply_path="queue"`` a channel error loses no reply: the exclusive reply queue
    outlives it and the reopened channel consumes it again, so a call that was waiting gets
    its result, while the call the broker refused fails at once (by its confirm)."""
    exchange = f"{name}.ex"
    slow = Gate()

    async with await hutch.connect_robust(amqp_url, reconnect_delay=0.1) as connection:
        caller = await RPC.create(
            await connection.channel(), exchange=exchange, reply_path="queue", timeout=60
        )
        callee = await RPC.create(await connection.channel(), exchange=exchange)
        await callee.register("slow", slow, auto_delete=True)
        waiting = asyncio.ensure_future(caller.call("slow"))
        await asyncio.wait_for(slow.started.wait(), WAIT)
        other = await connection.channel()
        await other.exchange_delete(exchange)
        with pytest.raises(hutch.NotFound, match="no callee registered for 'm': exchange"):
            await asyncio.wait_for(caller.call("m"), WAIT)
        # A round trip on the caller's channel returns once it has reopened and consumes the
        # reply queue again (the broker auto-deletes that queue with its last consumer, so a
        # reply sent before then would find no queue).
        assert caller._replies is not None
        await caller.channel.queue_declare(caller._replies.address, passive=True)
        slow.release.set()
        assert await asyncio.wait_for(waiting, WAIT) == "late"
        await caller.close()
        await callee.close()


async def test_closing_the_callee_connection_cancels_the_functions_it_runs(
    url: str, name: str
) -> None:
    """Closing a callee's connection (without closing the RPC object) cancels the functions
    still running, as it does every consumer callback: none runs on after ``close()``."""
    started = asyncio.Event()
    outcome: list[str] = []

    async def hang() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    async with connected(url) as caller_connection:
        caller = await RPC.create(await caller_connection.channel())
        callee_connection = await hutch.connect(url)
        callee = await RPC.create(await callee_connection.channel())
        await callee.register(name, hang, auto_delete=True)
        waiting = asyncio.ensure_future(caller.call(name, timeout=WAIT))
        await asyncio.wait_for(started.wait(), WAIT)
        await callee_connection.close()
        assert outcome == ["cancelled"]
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await callee.close()
        await caller.close()


# -- serializers -----------------------------------------------------------------------------


class SeedMsgpackRPC(RPC):
    """The seed's extension example, verbatim in substance."""

    CONTENT_TYPE = "application/msgpack"

    def serialize(self, data: Any) -> bytes:
        return bytes(msgpack.dumps(data))

    def deserialize(self, data: bytes) -> Any:
        return msgpack.loads(data)


@pytest.mark.parametrize("cls", [SeedMsgpackRPC, MsgpackRPC])
async def test_serializer_subclass_round_trips(
    url: str, name: str, cls: Callable[..., Any]
) -> None:
    """An RPC subclass with its own CONTENT_TYPE/serialize/deserialize (the seed's
    MsgpackRPC) carries calls, results and errors in that format."""
    async with connected(url) as connection:
        channel = await connection.channel()
        rpc: RPC = await cls.create(channel)  # type: ignore[attr-defined]
        await rpc.register(name, multiply, auto_delete=True)
        assert await rpc.call(name, {"x": 3, "y": 3}) == 9
        seen: asyncio.Queue[hutch.IncomingMessage] = asyncio.Queue()
        await channel.queue_declare(f"{name}.raw", auto_delete=True)
        await channel.consume(f"{name}.raw", seen.put_nowait, no_ack=True)
        with pytest.raises(hutch.CallTimeout):
            await rpc.call(f"{name}.raw", {"x": 1}, timeout=0.1)
        raw = await asyncio.wait_for(seen.get(), WAIT)
        assert raw.content_type == "application/msgpack"
        assert msgpack.loads(raw.body) == {"x": 1}
        with pytest.raises(TypeError):
            await rpc.call(name, {"x": 3})
        await rpc.close()


async def test_pickle_rpc_warns_and_works(url: str, name: str) -> None:
    """PickleRPC is an explicit opt-in: creating it warns UnsafeSerializerWarning."""
    async with connected(url) as connection:
        with pytest.warns(UnsafeSerializerWarning, match="unpickles"):
            rpc = await PickleRPC.create(await connection.channel())
        await rpc.register(name, multiply, auto_delete=True)
        assert await rpc.call(name, {"x": 2, "y": 8}) == 16
        await rpc.close()
