"""One TCP (or TLS) connection to a broker: framing, coalesced writes and heartbeats.

A ``Link`` lives as long as one socket. The ``Connection`` above it outlives links: when a link
dies, a robust connection opens a new one and hands its channels over.

Writes are coalesced, so a burst of publishes or acks becomes one ``send()``: the first write
after a read goes out at once (it starts an exchange: a publish awaited one by one, a call),
the writes after it wait for the end of the event-loop iteration, and what a read's frames make
the client write goes out when that read ends. Reads parse every whole frame in the received
bytes in one pass and hand them to channels without copying method frames.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from hutch.amqp import frames
from hutch.exceptions import ConnectionLost, HutchConnectionError, ProtocolError

if TYPE_CHECKING:
    from hutch.amqp.channel import Channel

log = logging.getLogger("hutch")

_unpack_head = frames.FRAME_HEAD.unpack_from
_DELIVER = frames.BASIC_DELIVER
_ACK = frames.BASIC_ACK
_decode_deliver = frames.decode_deliver
_unpack_u32 = struct.Struct(">I").unpack_from
_RECV_SIZE = 256 * 1024  # what asyncio reads at most per recv() by default
# A read at least this big may have filled the event loop's read buffer (asyncio's 256 KiB,
# uvloop's 256,000 bytes), and then the loop may read again at once, in the same callback.
_FULL_READ = 64 * 1024
# a content header frame's head and its class, weight and body size
_unpack_content = struct.Struct(">BHIHHQ").unpack_from


def new_link(
    loop: asyncio.AbstractEventLoop,
    channels: dict[int, Channel],
    on_channel0: Callable[[Link, frames.Method], None],
    on_lost: Callable[[Link, HutchConnectionError], None],
    frame_max: int,
) -> Link:
    """The link for a new socket on ``loop``: on asyncio's own loops one that reads into a
    buffer of its own (``BufferedLink``); on others (uvloop), which read into a buffer they
    keep and hand over the bytes, a plain protocol, which costs them less per read."""
    cls = BufferedLink if isinstance(loop, asyncio.BaseEventLoop) else Link
    return cls(channels, on_channel0, on_lost, frame_max)


class Link(asyncio.Protocol):
    """The socket side of a connection. Created by ``loop.create_connection``."""

    def __init__(
        self,
        channels: dict[int, Channel],
        on_channel0: Callable[[Link, frames.Method], None],
        on_lost: Callable[[Link, HutchConnectionError], None],
        frame_max: int,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.channels = channels
        self.on_channel0 = on_channel0
        self.on_lost = on_lost
        self.frame_max = frame_max
        self.transport: asyncio.Transport | None = None
        self.error: HutchConnectionError | None = None
        self.closed = self.loop.create_future()
        self._leftover = b""
        self._out: list[bytes] = []
        self._held: list[Channel] = []  # channels holding a coalesced ack (Channel._settle)
        self._flush_handle: asyncio.Handle | None = None
        self._held_timer: asyncio.TimerHandle | None = None  # a held ack's delay (hold())
        self._received = False
        self._reading = False  # inside data_received: writes wait for the end of the read
        self._flush_at_read_end = False  # ... and this says there is something to send then
        # On Python 3.11 only a delivery that came alone in its read starts its consumer task
        # eagerly (see Channel._run_callback): true while the link hands over such a delivery.
        self.eager_task_free = False
        # Whether the last read filled the buffer: then the next may come in the same loop
        # callback (uvloop, and asyncio's TLS, read again at once), before the tasks the last
        # one started took their first step, so no delivery in it counts as alone.
        self._after_full_read = False
        self._quiet = True  # nothing written since the last read: the next write goes at once
        self._sent = False
        self._heartbeat_handle: asyncio.TimerHandle | None = None
        self._silent_ticks = 0
        # Publishers wait on this while the socket buffer is full or the broker blocked us.
        self.writable = True
        self._paused = False
        self.blocked: str | None = None
        self._writable_event = asyncio.Event()
        self._writable_event.set()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            if self._leftover and self._leftover[:4] != b"AMQP":
                self.error = ProtocolError(
                    f"the connection closed in the middle of a frame ({len(self._leftover)} "
                    "bytes of it had arrived): the broker hung up mid-message or the stream "
                    "is corrupt"
                )
                log.warning("%s", self.error)
            else:
                reason = f": {exc}" if exc else ""
                self.error = ConnectionLost(f"the connection to the broker was lost{reason}")
        self._stop_timers()
        self.transport = None
        self._out.clear()
        # The channels move to the next link and hold their acks there: a late write to this
        # one must not take (and drop) them.
        self._held.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        self._writable_event.set()
        self.on_lost(self, self.error)

    def pause_writing(self) -> None:
        self._paused = True
        self._update_writable()

    def resume_writing(self) -> None:
        self._paused = False
        self._update_writable()

    def data_received(self, data: bytes) -> None:
        self._reading = True
        try:
            self._read(data)
        finally:
            self._reading = False
            # What the frames of this read made us write (acks, replies) goes out now, in one
            # write, rather than an event-loop iteration later; no loop callback was scheduled
            # for it (a cancelled one would still cost the loop an extra turn). Also when the
            # read failed: nothing written in it is left behind.
            self._quiet = True
            if self._flush_at_read_end:
                self._flush_at_read_end = False
                self.flush_now()
            elif self._flush_handle is not None:
                self.flush_now()

    def _read(self, data: bytes) -> None:
        self._received = True
        after_full, self._after_full_read = self._after_full_read, len(data) >= _FULL_READ
        if self._leftover:
            data = self._leftover + data
            self._leftover = b""
        if data.startswith(b"AMQP"):
            self.fail(
                ProtocolError(
                    "the server answered with an AMQP protocol header: it does not speak "
                    "AMQP 0-9-1 (is this a RabbitMQ port?)"
                )
            )
            return
        pos = 0
        total = len(data)
        channels = self.channels
        frame_max = self.frame_max
        try:
            while total - pos >= 7:
                kind, number, size = _unpack_head(data, pos)
                if size > frame_max:
                    raise ProtocolError(
                        f"the broker sent a frame of {size} bytes; the negotiated maximum is "
                        f"{frame_max}"
                    )
                end = pos + 7 + size
                if end >= total:
                    break
                if data[end] != 0xCE:
                    raise ProtocolError(
                        f"a frame from the broker does not end with 0xCE (got 0x{data[end]:02x}): "
                        "the byte stream is corrupt"
                    )
                start = pos + 7
                pos = end + 1
                if kind == 3:
                    channel = channels.get(number)
                    if channel is not None:
                        channel._on_body(data[start:end])
                elif kind == 1:
                    if number == 0:
                        self.on_channel0(self, frames.decode_method(data[start:end]))
                        continue
                    channel = channels.get(number)
                    if channel is None:
                        continue
                    mid = _unpack_u32(data, start)[0]
                    if mid == _DELIVER:
                        fields = _decode_deliver(data, start, end)
                        # Usually the content header and a single body frame follow in the
                        # same read: hand over the whole delivery in one call.
                        if total - pos >= 19:
                            kind, head_number, size, _c, _w, body_size = _unpack_content(data, pos)
                            head_end = pos + 7 + size
                            body_end = head_end + 8 + body_size
                            if (
                                kind == 2
                                and head_number == number
                                and size <= frame_max
                                and body_end < total
                                and data[head_end] == 0xCE
                                and data[body_end] == 0xCE
                            ):
                                kind, body_number, size = _unpack_head(data, head_end + 1)
                                if (
                                    kind == 3
                                    and body_number == number
                                    and size == body_size
                                    and size <= frame_max
                                ):
                                    # the read is this delivery and nothing else
                                    self.eager_task_free = (
                                        start == 7 and body_end + 1 == total and not after_full
                                    )
                                    channel._on_delivery(
                                        fields,
                                        data,
                                        pos + 7,
                                        head_end,
                                        data[head_end + 8 : body_end],
                                    )
                                    self.eager_task_free = False
                                    pos = body_end + 1
                                    continue
                        channel._on_deliver(*fields)
                    elif mid == _ACK:
                        channel._on_confirm(*frames.decode_confirm(data, start), False)
                    else:
                        channel._on_method(frames.decode_method(data[start:end]))
                elif kind == 2:
                    channel = channels.get(number)
                    if channel is not None:
                        channel._on_header(data, start, end)
                elif kind == 8:
                    pass
                else:
                    raise ProtocolError(f"the broker sent a frame of unknown type {kind}")
        except ProtocolError as exc:
            self.fail(exc)
            return
        except (struct.error, IndexError) as exc:  # a frame too short for what it claims
            self.fail(ProtocolError(f"the broker sent a frame too short for its contents: {exc}"))
            return
        if pos < total:
            self._leftover = data[pos:]

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send bytes: at once if they are the first since the last read (a request that
        starts an exchange, such as a publish awaited one by one), else together with the
        other writes of this event-loop iteration, at its end (pipelined publishes)."""
        if self._held:
            self._release_held()
        self._out.append(data)
        if self._reading:
            self._flush_at_read_end = True
        elif self._flush_handle is None:
            if self._quiet:
                self._quiet = False
                self._flush()
            else:
                self._flush_handle = self.loop.call_soon(self._flush)

    def hold(self, channel: Channel, delay: float = 0.0) -> None:
        """``channel`` holds a coalesced ack: take it when flushing (at the end of this
        event-loop iteration, or ``delay`` seconds from now), or before any other frame is
        queued (so it never goes out after, say, the channel's close)."""
        self._held.append(channel)
        if not delay:
            self.flush_soon()
        elif self._flush_handle is None and self._held_timer is None:
            self._held_timer = self.loop.call_later(delay, self._held_timer_fired)

    def flush_soon(self) -> None:
        """Send what is queued and held at the end of this event-loop iteration (or of this
        read, inside one)."""
        if self._reading:
            self._flush_at_read_end = True
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _held_timer_fired(self) -> None:
        self._held_timer = None
        if self._flush_handle is None:
            self._flush()

    def _release_held(self) -> None:
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        held, self._held = self._held, []
        out = self._out
        for channel in held:
            frame = channel._take_held_ack()
            if frame:
                out.append(frame)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._held:
            self._release_held()
        out = self._out
        if not out or self.transport is None or self.transport.is_closing():
            out.clear()  # (after fail(): uvloop raises on a write to an aborted transport)
            return
        self._sent = True
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def flush_now(self) -> None:
        """Send what is queued without waiting for the loop (at the end of a read, and before
        closing)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()

    def set_blocked(self, reason: str | None) -> None:
        """The broker sent ``connection.blocked`` (a reason) or ``connection.unblocked`` (None)."""
        self.blocked = reason
        self._update_writable()

    def _update_writable(self) -> None:
        self.writable = not self._paused and self.blocked is None
        if self.writable:
            self._writable_event.set()
        else:
            self._writable_event.clear()

    async def wait_writable(self) -> None:
        """Wait until publishing may go on (not blocked by the broker, socket not full)."""
        while not self.writable and self.error is None:
            await self._writable_event.wait()
        if self.error is not None:
            raise self.error

    # -- heartbeats -------------------------------------------------------------------------

    def start_heartbeat(self, interval: int) -> None:
        """Send a heartbeat when idle and give up on a peer silent for ~2 intervals."""
        if interval <= 0:
            return
        tick = interval / 4
        # RabbitMQ sends a heartbeat every half interval when idle. Silent for 6 whole ticks
        # means dead: detected 1.5 to 1.75 intervals after the last byte, within the 2
        # intervals AMQP allows, with a quarter interval to spare for a late event loop.
        limit = 6

        def beat() -> None:
            if self.transport is None:
                return
            if self._received:
                self._received = False
                self._silent_ticks = 0
            else:
                self._silent_ticks += 1
                if self._silent_ticks >= limit:
                    self.fail(
                        ConnectionLost(
                            f"the broker sent nothing for {self._silent_ticks * tick:.1f} s "
                            f"(heartbeat {interval} s): it is unreachable or frozen"
                        )
                    )
                    return
            if not self._sent and not self._out:
                self.write(frames.HEARTBEAT)
            self._sent = False
            self._heartbeat_handle = self.loop.call_later(tick, beat)

        self._heartbeat_handle = self.loop.call_later(tick, beat)

    def _stop_timers(self) -> None:
        if self._heartbeat_handle is not None:
            self._heartbeat_handle.cancel()
            self._heartbeat_handle = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None

    # -- ending -----------------------------------------------------------------------------

    def fail(self, error: HutchConnectionError) -> None:
        """Drop the socket now; every waiter gets ``error``."""
        if self.error is None:
            self.error = error
            if isinstance(error, ProtocolError):
                log.error("closing the connection: %s", error)
        if self.transport is not None:
            self.transport.abort()

    def close_transport(self) -> None:
        """Close the socket after what is queued has been sent."""
        self.flush_now()
        if self.transport is not None:
            self.transport.close()

    @property
    def is_open(self) -> bool:
        return self.transport is not None and self.error is None

    def extra(self, name: str) -> Any:
        return self.transport.get_extra_info(name) if self.transport is not None else None


class BufferedLink(Link, asyncio.BufferedProtocol):
    """A ``Link`` for asyncio's own event loops: the socket reads into one buffer the link
    keeps, instead of asyncio allocating a 256 KiB bytes object per read (with glibc that
    allocation can cost an mmap, mremap and munmap per read, tens of µs, which dominates a
    small read's cost)."""

    def __init__(
        self,
        channels: dict[int, Channel],
        on_channel0: Callable[[Link, frames.Method], None],
        on_lost: Callable[[Link, HutchConnectionError], None],
        frame_max: int,
    ) -> None:
        super().__init__(channels, on_channel0, on_lost, frame_max)
        self._recv_view = memoryview(bytearray(_RECV_SIZE))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._recv_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._recv_view[:nbytes].tobytes())
