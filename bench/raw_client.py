"""The floor: the least a Python asyncio client can do to publish with confirms.

No error handling, no reconnects, no message objects: pamqp for the handshake, then pre-encoded
``basic.publish`` frames written straight to the transport and publisher confirms resolved from
the raw bytes. ``bench_client.py`` runs it next to hutch to show what a real client's round trip
costs over the bare one ("publish one by one" is a broker round trip each).
"""

from __future__ import annotations

import asyncio
import struct
from urllib.parse import urlparse

from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

_HEAD = struct.Struct(">BHI")
_TAG = struct.Struct(">QB")
_ACK = 0x003C0050


class RawClient(asyncio.Protocol):
    """One connection, one channel with publisher confirms."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[object] | None = None
        self.seq = 0
        self.floor = 0
        self.pending: dict[int, asyncio.Future[None]] = {}

    @classmethod
    async def connect(cls, url: str, *, confirms: bool = True) -> RawClient:
        parts = urlparse(url)
        loop = asyncio.get_running_loop()
        _transport, client = await loop.create_connection(cls, parts.hostname, parts.port or 5672)
        await client._handshake(parts.username or "guest", parts.password or "guest", confirms)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def _send(self, channel: int, method: object) -> None:
        assert self.transport is not None
        self.transport.write(pamqp_frame.marshal(method, channel))  # type: ignore[arg-type]

    async def _expect(self) -> object:
        self.waiter = self.loop.create_future()
        return await self.waiter

    async def _handshake(self, user: str, password: str, confirms: bool) -> None:
        assert self.transport is not None
        self.transport.write(b"AMQP\x00\x00\x09\x01")
        await self._expect()  # Connection.Start
        self._send(
            0,
            spec.Connection.StartOk(
                client_properties={"product": "raw"},
                mechanism="PLAIN",
                response=f"\0{user}\0{password}",
            ),
        )
        tune = await self._expect()
        assert isinstance(tune, spec.Connection.Tune)
        self._send(0, spec.Connection.TuneOk(channel_max=16, frame_max=tune.frame_max, heartbeat=0))
        self._send(0, spec.Connection.Open())
        await self._expect()
        self._send(1, spec.Channel.Open())
        await self._expect()
        if confirms:
            self._send(1, spec.Confirm.Select())
            await self._expect()

    async def rpc(self, method: object) -> object:
        self._send(1, method)
        return await self._expect()

    def publish_frames(self, routing_key: str, body: bytes) -> bytes:
        """The bytes of one publish (method, header, body), to encode once and reuse."""
        return b"".join(
            [
                pamqp_frame.marshal(spec.Basic.Publish(exchange="", routing_key=routing_key), 1),
                pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(body)), 1),
                _HEAD.pack(3, 1, len(body)) + body + b"\xce",
            ]
        )

    def publish(self, data: bytes) -> asyncio.Future[None]:
        assert self.transport is not None
        self.seq += 1
        future = self.loop.create_future()
        self.pending[self.seq] = future
        self.transport.write(data)
        return future

    def data_received(self, data: bytes) -> None:
        data = self.buffer + data if self.buffer else data
        pos = 0
        while len(data) - pos >= 8:
            kind, _channel, size = _HEAD.unpack_from(data, pos)
            end = pos + 7 + size
            if end >= len(data):
                break
            self._frame(kind, data, pos, end)
            pos = end + 1
        self.buffer = data[pos:]

    def _frame(self, kind: int, data: bytes, pos: int, end: int) -> None:
        """One whole frame, ``data[pos : end + 1]`` (its payload is ``data[pos + 7 : end]``)."""
        if kind != 1:
            return
        if int.from_bytes(data[pos + 7 : pos + 11], "big") == _ACK:
            tag, multiple = _TAG.unpack_from(data, pos + 11)
            self._confirm(tag, bool(multiple & 1))
        else:
            self._reply(data[pos : end + 1])

    def _confirm(self, tag: int, multiple: bool) -> None:
        """A publisher confirm: resolve the publish ``tag`` (and every one before it)."""
        for number in range(self.floor + 1, tag + 1) if multiple else (tag,):
            future = self.pending.pop(number, None)
            if future is not None:
                future.set_result(None)
        if multiple:
            self.floor = max(self.floor, tag)

    def _reply(self, frame: bytes) -> None:
        """A method frame that answers the synchronous request ``_expect`` waits for."""
        if self.waiter is not None:
            _consumed, _channel, method = pamqp_frame.unmarshal(frame)
            waiter, self.waiter = self.waiter, None
            waiter.set_result(method)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
