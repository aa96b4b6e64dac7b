"""The channel's hot path without a broker: coalesced acks, confirms, callbacks.

A real ``Channel`` sits on a real ``Link`` whose transport records the bytes it is given; frames
from the "broker" are fed to ``Link.data_received`` and what the client sent is parsed back with
pamqp. The property test replays the client's settlements against a model of the broker's
unacked-delivery bookkeeping: a coalesced ``multiple=True`` ack must never cover a delivery the
program has not acked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

import hutch
from hutch._eager import EAGER_TASKS_ARE_CHEAP
from hutch.amqp import frames
from hutch.amqp.channel import Channel, _Consumer
from hutch.amqp.link import _RECV_SIZE, Link
from tests.support.offline import open_offline_channel


class _Transport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.writes: list[bytes] = []  # one item per write call: what one send() carries
        self.closing = False

    def write(self, data: bytes) -> None:
        if self.closing:
            raise RuntimeError("write on a closed transport (as uvloop raises)")
        self.data += data
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str) -> Any:
        return None

    def is_closing(self) -> bool:
        return self.closing


def _open_channel() -> tuple[Link, Channel, _Transport]:
    transport = _Transport()
    link, channel = open_offline_channel(transport)
    return link, channel, transport


def _sent(transport: _Transport) -> list[Any]:
    """The methods the client wrote, in order (content frames skipped)."""
    data = bytes(transport.data)
    out = []
    while data:
        consumed, _channel, frame = pamqp_frame.unmarshal(data)
        data = data[consumed:]
        if isinstance(frame, spec.Basic.Ack | spec.Basic.Nack | spec.Basic.Reject):
            out.append(frame)
    transport.data.clear()
    return out


def _delivery(tag: int, consumer_tag: str) -> bytes:
    return b"".join(
        [
            pamqp_frame.marshal(
                spec.Basic.Deliver(consumer_tag=consumer_tag, delivery_tag=tag, routing_key="q"),
                1,
            ),
            pamqp_frame.marshal(pamqp_header.ContentHeader(0, 1), 1),
            frames.FRAME_HEAD.pack(3, 1, 1) + b"x\xce",
        ]
    )


def _consume(channel: Channel, tag: str, no_ack: bool, into: dict[int, Any]) -> None:
    method = spec.Basic.Consume(queue="q", consumer_tag=tag, no_ack=no_ack)
    channel._consumers[tag] = _Consumer(method, lambda m: into.__setitem__(m.delivery_tag, m))


# -- coalesced acks -----------------------------------------------------------------------------


@dataclass
class _Broker:
    """The broker's view: which deliveries are still unacked, and what became of the others."""

    outstanding: set[int]
    acked: set[int]
    returned: set[int]

    def receive(self, frame: Any) -> None:
        tag = frame.delivery_tag
        assert tag in self.outstanding, f"{frame} names a tag that is not outstanding"
        if isinstance(frame, spec.Basic.Ack) and frame.multiple:
            covered = {t for t in self.outstanding if t <= tag}
            self.outstanding -= covered
            self.acked |= covered
        else:
            self.outstanding.discard(tag)
            (self.acked if isinstance(frame, spec.Basic.Ack) else self.returned).add(tag)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["deliver"] * 4 + ["settle"] * 4 + ["deliver_no_ack", "flush", "other_frame"]
        ),
        st.integers(0, 1000),
        st.sampled_from(["ack", "ack", "ack", "nack", "reject", "ack_multiple"]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_coalesced_acks_only_ever_ack_what_the_program_acked(ops: list[Any]) -> None:
    """Whatever the order of deliveries, settlements and flushes, the frames sent ack exactly
    the deliveries the program acked (``multiple=True`` included) and nothing else."""

    async def scenario() -> None:
        link, channel, transport = _open_channel()
        delivered: dict[int, Any] = {}
        _consume(channel, "acks", False, delivered)
        _consume(channel, "auto", True, {})
        broker = _Broker(set(), set(), set())
        program_acked: set[int] = set()
        program_returned: set[int] = set()
        next_tag = 1
        for op, pick, how in ops:
            if op in ("deliver", "deliver_no_ack"):
                no_ack = op == "deliver_no_ack"
                link.data_received(_delivery(next_tag, "auto" if no_ack else "acks"))
                if not no_ack:
                    broker.outstanding.add(next_tag)
                next_tag += 1
            elif op == "settle":
                waiting = sorted(t for t, m in delivered.items() if not m.settled)
                if not waiting:
                    continue
                message = delivered[waiting[pick % len(waiting)]]
                if how == "ack":
                    message.ack()
                    program_acked.add(message.delivery_tag)
                elif how == "ack_multiple":
                    message.ack(multiple=True)
                    covered = {t for t in waiting if t <= message.delivery_tag}
                    for tag in covered:
                        delivered[tag]._settled = True
                    program_acked |= covered
                elif how == "nack":
                    message.nack(requeue=True)
                    program_returned.add(message.delivery_tag)
                else:
                    message.reject(requeue=False)
                    program_returned.add(message.delivery_tag)
            elif op == "flush":
                link._flush()
            else:
                link.write(frames.HEARTBEAT)
            for frame in _sent(transport):
                broker.receive(frame)
            assert broker.acked <= program_acked
            assert broker.returned <= program_returned
        link._flush()
        for frame in _sent(transport):
            broker.receive(frame)
        assert broker.acked == program_acked
        assert broker.returned == program_returned

    asyncio.run(scenario())


async def test_acks_in_one_iteration_go_out_as_one_multiple_ack() -> None:
    """A burst of in-order acks becomes a single ``basic.ack`` with ``multiple=True``."""
    link, channel, transport = _open_channel()
    delivered: dict[int, Any] = {}
    _consume(channel, "acks", False, delivered)
    link.data_received(b"".join(_delivery(tag, "acks") for tag in range(1, 101)))
    for message in delivered.values():
        await message.ack()
    link._flush()
    [frame] = _sent(transport)
    assert isinstance(frame, spec.Basic.Ack)
    assert frame.delivery_tag == 100
    assert frame.multiple


async def test_a_held_ack_goes_out_before_any_later_frame() -> None:
    """A held ack is written ahead of whatever the channel writes next (e.g. its close)."""
    link, channel, transport = _open_channel()
    delivered: dict[int, Any] = {}
    _consume(channel, "acks", False, delivered)
    link.data_received(_delivery(1, "acks"))
    await delivered[1].ack()
    assert not transport.data  # held until the flush
    link.write(
        frames.encode_method(
            1, spec.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
        )
    )
    link._flush()
    consumed, _ch, first = pamqp_frame.unmarshal(bytes(transport.data))
    _consumed, _ch, second = pamqp_frame.unmarshal(bytes(transport.data[consumed:]))
    assert isinstance(first, spec.Basic.Ack)
    assert isinstance(second, spec.Channel.Close)


class _SignallingTransport(_Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def write(self, data: bytes) -> None:
        super().write(data)
        self.written.set()


async def _loop_steps(count: int = 3) -> None:
    """Let the event loop run the callbacks that are due now (the end-of-iteration flush)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_ack_delay_holds_acks_past_the_iteration_then_sends_one() -> None:
    """With ``ack_delay`` the held ack outlives the loop iteration and goes out on its timer,
    as one ``multiple=True`` ack of everything acked meanwhile."""
    transport = _SignallingTransport()
    link, channel = open_offline_channel(transport)
    channel.ack_delay = 0.05
    delivered: dict[int, Any] = {}
    _consume(channel, "acks", False, delivered)
    link.data_received(b"".join(_delivery(tag, "acks") for tag in range(1, 4)))
    delivered[1].ack()
    await _loop_steps()
    assert not transport.data  # an iteration's flush did not send it
    delivered[2].ack()
    delivered[3].ack()
    await asyncio.wait_for(transport.written.wait(), 5)
    [frame] = _sent(transport)
    assert isinstance(frame, spec.Basic.Ack)
    assert (frame.delivery_tag, frame.multiple) == (3, True)


async def test_ack_delay_sends_at_once_when_half_the_prefetch_is_held() -> None:
    """However long the delay, acks go out once they cover half the prefetch, so the broker
    always has room to deliver more."""
    link, channel, transport = _open_channel()
    channel.ack_delay = 3600.0
    channel._qos = spec.Basic.Qos(prefetch_count=4)
    delivered: dict[int, Any] = {}
    _consume(channel, "acks", False, delivered)
    link.data_received(b"".join(_delivery(tag, "acks") for tag in range(1, 5)))
    delivered[1].ack()
    await _loop_steps()
    assert _sent(transport) == []
    delivered[2].ack()
    await _loop_steps()
    [frame] = _sent(transport)
    assert (frame.delivery_tag, frame.multiple) == (2, True)
    delivered[3].ack()
    delivered[4].ack()
    await _loop_steps()
    [frame] = _sent(transport)
    assert (frame.delivery_tag, frame.multiple) == (4, True)


async def test_ack_delay_sends_the_held_ack_before_the_next_frame() -> None:
    """A delayed ack still goes out ahead of any later frame, a close included."""
    link, channel, transport = _open_channel()
    channel.ack_delay = 3600.0
    delivered: dict[int, Any] = {}
    _consume(channel, "acks", False, delivered)
    link.data_received(_delivery(1, "acks"))
    delivered[1].ack()
    link.write(
        frames.encode_method(
            0, spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
        )
    )
    link._flush()
    consumed, _ch, first = pamqp_frame.unmarshal(bytes(transport.data))
    _consumed, _ch, second = pamqp_frame.unmarshal(bytes(transport.data[consumed:]))
    assert isinstance(first, spec.Basic.Ack)
    assert isinstance(second, spec.Connection.Close)
    assert link._held_timer is None  # released: the timer has nothing left to send


async def test_an_unsettled_delivery_keeps_later_acks_individual() -> None:
    """While delivery 1 is unsettled, acks of 2 and 3 are sent one by one (no multiple)."""
    link, channel, transport = _open_channel()
    delivered: dict[int, Any] = {}
    _consume(channel, "acks", False, delivered)
    link.data_received(b"".join(_delivery(tag, "acks") for tag in (1, 2, 3)))
    await delivered[2].ack()
    await delivered[3].ack()
    link._flush()
    sent = _sent(transport)
    assert [(f.delivery_tag, f.multiple) for f in sent] == [(2, False), (3, False)]


# -- settling from callbacks --------------------------------------------------------------------


async def test_a_plain_callback_acks_without_awaiting() -> None:
    """``message.ack()`` settles at once: a plain ``def`` callback needs no await or task, and
    the returned awaitable may still be awaited."""
    link, channel, transport = _open_channel()
    seen: list[hutch.IncomingMessage] = []
    results: list[Any] = []

    def on_message(message: hutch.IncomingMessage) -> Any:
        seen.append(message)
        results.append(message.ack())
        return results[-1]  # returning the awaitable must not create a task or fail

    method = spec.Basic.Consume(queue="q", consumer_tag="c")
    channel._consumers["c"] = _Consumer(method, on_message)
    link.data_received(_delivery(1, "c"))
    assert seen[0].settled
    assert not channel._tasks
    assert await results[0] is None  # awaiting it is optional, and harmless
    with pytest.raises(hutch.MessageAlreadySettled):
        await seen[0].ack()
    link._flush()
    assert [f.delivery_tag for f in _sent(transport)] == [1]


async def test_an_async_callback_that_raises_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An ``async def`` callback's exception is logged with its traceback, and the channel
    forgets the task."""
    link, channel, _transport = _open_channel()
    done = asyncio.Event()

    async def on_message(message: hutch.IncomingMessage) -> None:
        done.set()
        raise RuntimeError("boom")

    method = spec.Basic.Consume(queue="q", consumer_tag="c")
    channel._consumers["c"] = _Consumer(method, on_message)
    with caplog.at_level(logging.ERROR, logger="hutch"):
        link.data_received(_delivery(1, "c"))
        await asyncio.wait_for(done.wait(), 5)
        for _ in range(3):
            await asyncio.sleep(0)
    assert "consumer callback raised" in caplog.text
    assert "boom" in caplog.text
    assert not channel._tasks


# -- publisher confirms -------------------------------------------------------------------------


async def test_a_multiple_confirm_resolves_every_covered_publish() -> None:
    """``basic.ack`` with ``multiple=True`` resolves every publish up to its tag and no
    further; a ``basic.nack`` fails its publish with PublishNacked."""
    link, channel, _transport = _open_channel()
    futures = [channel.publish_nowait(hutch.Message(b"m"), "q") for _ in range(5)]
    link.data_received(frames.encode_ack(1, 3, True))
    assert [f.done() for f in futures] == [True, True, True, False, False]
    link.data_received(pamqp_frame.marshal(spec.Basic.Nack(delivery_tag=4), 1))
    with pytest.raises(hutch.PublishNacked):
        await futures[3]
    assert not futures[4].done()
    link.data_received(frames.encode_ack(1, 5, False))
    await futures[4]
    assert channel._floor == 5
    assert not channel._unconfirmed


async def test_publish_nowait_of_bytes_is_written_in_the_call() -> None:
    """``publish_nowait(b"...")`` encodes and writes the frames in the call (no task)."""
    link, channel, transport = _open_channel()
    future = channel.publish_nowait(b"payload", "q")
    assert b"payload" in bytes(transport.data) + b"".join(link._out)
    assert not future.done()


async def test_a_write_to_a_lost_link_does_not_take_the_next_links_held_ack() -> None:
    """After its connection is lost, a link no longer releases the held acks of the channels
    it had: once a channel holds an ack on the link that replaced it, a stray write to the
    old link leaves that ack to the new one."""
    old, channel, _old_transport = _open_channel()
    channel.ack_delay = 60.0  # held until a flush, not sent by a timer during the test
    delivered: dict[int, Any] = {}
    _consume(channel, "acks", False, delivered)
    old.data_received(_delivery(1, "acks"))
    await delivered.pop(1).ack()
    old.connection_lost(None)
    new = Link(old.channels, lambda *_: None, lambda *_: None, old.frame_max)
    new_transport = _Transport()
    new.transport = new_transport  # type: ignore[assignment]
    channel._begin(new)
    new.data_received(_delivery(1, "acks"))
    await delivered.pop(1).ack()
    old.write(frames.HEARTBEAT)  # e.g. an operation that still held the old link
    new._flush()
    [frame] = _sent(new_transport)
    assert isinstance(frame, spec.Basic.Ack)
    assert frame.delivery_tag == 1


# -- when writes reach the socket ---------------------------------------------------------------


async def test_the_first_write_after_a_read_goes_out_at_once_the_rest_together() -> None:
    """A publish that follows a read (one awaited one by one) is sent in the call; the
    publishes after it in the same event-loop iteration go out together, in one write, at the
    end of the iteration."""
    link, channel, transport = _open_channel()
    link.data_received(frames.HEARTBEAT)
    channel.publish_nowait(b"first", "q")
    assert len(transport.writes) == 1
    assert b"first" in transport.writes[0]
    channel.publish_nowait(b"second", "q")
    channel.publish_nowait(b"third", "q")
    assert len(transport.writes) == 1
    await asyncio.sleep(0)  # one loop iteration: the end-of-iteration flush has run
    assert len(transport.writes) == 2
    assert b"second" in transport.writes[1]
    assert b"third" in transport.writes[1]
    link.data_received(frames.HEARTBEAT)
    channel.publish_nowait(b"fourth", "q")
    assert len(transport.writes) == 3  # quiet again after the read


async def test_what_a_read_makes_the_client_write_goes_out_at_its_end_in_one_write() -> None:
    """Acks of plain callbacks made while a read is processed are sent when the read ends, as
    one ``basic.ack(multiple)`` in one write, not one write each nor a loop iteration later."""
    link, channel, transport = _open_channel()
    method = spec.Basic.Consume(queue="q", consumer_tag="sync")
    channel._consumers["sync"] = _Consumer(method, lambda m: m.ack())
    link.data_received(b"".join(_delivery(tag, "sync") for tag in range(1, 11)))
    assert len(transport.writes) == 1
    [frame] = _sent(transport)
    assert isinstance(frame, spec.Basic.Ack)
    assert (frame.delivery_tag, frame.multiple) == (10, True)


async def test_nothing_is_written_to_a_transport_that_is_closing() -> None:
    """After the link dropped its socket, queued frames are discarded rather than written (a
    write to an aborted uvloop transport raises)."""
    link, channel, transport = _open_channel()
    link.data_received(frames.HEARTBEAT)
    channel.publish_nowait(b"sent", "q")
    channel.publish_nowait(b"queued", "q")
    transport.closing = True
    await asyncio.sleep(0)  # the end-of-iteration flush runs and must not raise
    assert len(transport.writes) == 1
    assert not link._out


async def _as_the_loop_does(read: Callable[[], object]) -> None:
    """Run ``read`` (which feeds the link) from a plain loop callback, outside any task, as
    the event loop calls a protocol (tests run in a task; a consumer task starts differently
    there)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_soon(lambda: (read(), done.set_result(None)))
    await asyncio.wait_for(done, 5)


async def test_an_async_callback_that_never_waits_runs_within_its_read_and_leaves_no_task() -> None:
    """An ``async def`` callback for a delivery that came alone in its read starts eagerly
    (Python 3.12's eager tasks, hutch's own on 3.11): when the read has been processed it has
    run, in a task of its own, and a callback that never waited left no task to track."""
    link, channel, _transport = _open_channel()
    ran: list[tuple[int, asyncio.Task[Any] | None]] = []
    seen_when_read: list[list[int]] = []

    async def on_message(message: hutch.IncomingMessage) -> None:
        ran.append((message.delivery_tag, asyncio.current_task()))
        await message.ack()

    method = spec.Basic.Consume(queue="q", consumer_tag="eager")
    channel._consumers["eager"] = _Consumer(method, on_message)
    for tag in (1, 2):

        def read(tag: int = tag) -> None:
            link.data_received(_delivery(tag, "eager"))
            seen_when_read.append([tag for tag, _task in ran])

        await _as_the_loop_does(read)
    assert seen_when_read == [[1], [1, 2]]
    tasks = [task for _tag, task in ran]
    assert None not in tasks
    assert tasks[0] is not tasks[1]
    assert channel._tasks == set()


async def _written(transport: _Transport) -> None:
    """Wait (a bounded number of loop turns) until the client wrote something."""
    for _ in range(100):
        if transport.writes:
            return
        await asyncio.sleep(0)
    raise AssertionError("the client wrote nothing")


def _recording_consumer(channel: Channel, tag: str, order: list[int]) -> None:
    async def on_message(message: hutch.IncomingMessage) -> None:
        order.append(message.delivery_tag)
        await message.ack()

    channel._consumers[tag] = _Consumer(spec.Basic.Consume(queue="q", consumer_tag=tag), on_message)


async def test_async_callbacks_of_deliveries_sharing_a_read_ack_in_one_frame() -> None:
    """``async def`` callbacks of deliveries that came together in one read run in delivery
    order, so their acks coalesce into one ``basic.ack(multiple)``: none is acked on its own
    ahead of the others. On Python 3.11 none of them starts within the read (there an eager
    task costs more than the loop turn it would save); on 3.12+ all do."""
    link, channel, transport = _open_channel()
    order: list[int] = []
    within_the_read: list[list[int]] = []
    _recording_consumer(channel, "batch", order)
    data = b"".join(_delivery(tag, "batch") for tag in range(1, 11))

    def read() -> None:
        link.data_received(data)
        within_the_read.append(list(order))

    await _as_the_loop_does(read)
    await _written(transport)
    assert within_the_read == [list(range(1, 11)) if EAGER_TASKS_ARE_CHEAP else []]
    assert order == list(range(1, 11))
    [ack] = _sent(transport)
    assert isinstance(ack, spec.Basic.Ack)
    assert (ack.delivery_tag, ack.multiple) == (10, True)


@pytest.mark.parametrize("full", [_RECV_SIZE, 256_000], ids=["asyncio-buffer", "uvloop-buffer"])
async def test_a_delivery_after_a_full_read_does_not_overtake_the_reads_tasks(full: int) -> None:
    """When a read filled the loop's buffer (asyncio's 256 KiB, uvloop's 256,000 bytes), the
    next can come in the same loop callback (uvloop and asyncio's TLS read again at once),
    before the tasks of the first took their first step: a delivery that is alone in that
    second read still starts after them, and every ack is a coalesced one (an ack out of order
    would go on its own, without ``multiple``)."""
    link, channel, transport = _open_channel()
    order: list[int] = []
    # A consumer tag whose length puts the buffer's end inside the last delivery's method
    # frame: that delivery is then whole, and alone, in the second read.
    for length in range(1, 200):
        tag = "c" * length
        one = len(_delivery(1, tag))
        method = len(
            pamqp_frame.marshal(
                spec.Basic.Deliver(consumer_tag=tag, delivery_tag=1, routing_key="q"), 1
            )
        )
        if 0 < full % one < method:
            break
    else:
        raise AssertionError("no consumer tag puts the cut inside a method frame")
    _recording_consumer(channel, tag, order)
    count = full // one + 1
    data = b"".join(_delivery(number, tag) for number in range(1, count + 1))
    first, rest = data[:full], data[full:]

    def reads() -> None:
        link.data_received(first)
        link.data_received(rest)  # the rest of the last delivery: alone in its read

    await _as_the_loop_does(reads)
    await _written(transport)
    assert order == list(range(1, count + 1))
    acks = _sent(transport)
    assert acks, "nothing was acked"
    assert all(isinstance(ack, spec.Basic.Ack) and ack.multiple for ack in acks), acks
    assert [ack.delivery_tag for ack in acks] == sorted({ack.delivery_tag for ack in acks})
    assert acks[-1].delivery_tag == count


async def test_a_delivery_that_is_not_whole_in_its_read_is_not_taken_for_a_lone_one() -> None:
    """A delivery whose content arrives in a later read than its method is dispatched from
    that read without counting as alone in it, even after a lone delivery whose callback was
    a plain function (which leaves the link's mark unused): on Python 3.11 it starts on the
    next loop turn; on 3.12+ within the read, as every task does."""
    link, channel, transport = _open_channel()
    order: list[int] = []
    _recording_consumer(channel, "split", order)
    channel._consumers["plain"] = _Consumer(
        spec.Basic.Consume(queue="q", consumer_tag="plain"), lambda m: m.ack()
    )
    delivery = _delivery(2, "split")
    method_end = 8 + int.from_bytes(delivery[3:7], "big")
    within_the_read: list[list[int]] = []

    def reads() -> None:
        link.data_received(_delivery(1, "plain"))  # alone, to a plain callback
        link.data_received(delivery[:method_end])  # the method alone
        link.data_received(delivery[method_end:])  # its header and body
        within_the_read.append(list(order))

    await _as_the_loop_does(reads)
    await _written(transport)
    assert within_the_read == [[2] if EAGER_TASKS_ARE_CHEAP else []]
    for _ in range(100):
        if order:
            break
        await asyncio.sleep(0)
    assert order == [2]


async def test_an_async_callbacks_reply_and_ack_leave_in_the_reads_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ``async def`` callback that publishes a reply and acks (an RPC callee) has both sent
    in one write when its read ends, and the link scheduled no flush for a later loop turn."""
    link, channel, transport = _open_channel()
    loop = asyncio.get_running_loop()
    scheduled: list[Any] = []
    call_soon = loop.call_soon

    def recording_call_soon(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        scheduled.append(callback)
        return call_soon(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon", recording_call_soon)

    async def on_message(message: hutch.IncomingMessage) -> None:
        channel.publish_nowait(b"the reply", "reply-to")
        await message.ack()

    method = spec.Basic.Consume(queue="q", consumer_tag="callee")
    channel._consumers["callee"] = _Consumer(method, on_message)
    written: list[int] = []

    def read() -> None:
        link.data_received(_delivery(1, "callee"))
        written.append(len(transport.writes))

    call_soon(read)
    await asyncio.sleep(0)
    assert written == [1]
    assert link._flush not in scheduled
    assert b"the reply" in transport.writes[0]
    [ack] = _sent(transport)
    assert isinstance(ack, spec.Basic.Ack)
    assert ack.delivery_tag == 1


async def test_what_a_read_wrote_is_sent_even_when_the_read_fails() -> None:
    """A read that ends in an exception (here a plain callback's ``KeyboardInterrupt``) still
    sends what its earlier frames made the client write: nothing is left queued unsent."""
    link, channel, transport = _open_channel()

    def on_message(message: hutch.IncomingMessage) -> None:
        if message.delivery_tag == 1:
            message.reject(requeue=True)
        else:
            raise KeyboardInterrupt

    method = spec.Basic.Consume(queue="q", consumer_tag="sync")
    channel._consumers["sync"] = _Consumer(method, on_message)
    with pytest.raises(KeyboardInterrupt):
        link.data_received(_delivery(1, "sync") + _delivery(2, "sync"))
    [frame] = _sent(transport)
    assert isinstance(frame, spec.Basic.Reject)
    assert frame.delivery_tag == 1
    assert not link._out
