"""The floor for the patterns: the least an asyncio client can do for one task or one call.

``bench_patterns.py`` runs it as a third client ("floor") in the two one-by-one scenarios, whose
goals are ratios of broker round trips. It puts on the wire what hutch's ``Master`` and ``RPC``
put there: a task is a persistent, mandatory, confirmed JSON publish; a call is a mandatory JSON
publish with a correlation id, direct reply-to, an expiration, a priority, a timestamp and type
"call", on a channel without confirms; the callee replies and acks in one write. Nothing else:
hand-packed frames, one channel per connection, no message objects, no error handling, no
timeouts, no reconnection. The worker holds its acks for 1 ms and sends them as one
``basic.ack(multiple)``, as hutch's does. So its round trip is the broker's and the kernel's,
plus the few microseconds Python needs to pack and parse a frame.

Nothing here is meant for use outside this benchmark.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pamqp import commands as spec

from raw_client import RawClient

_HEAD = struct.Struct(">BHI")
_METHOD = struct.Struct(">HH")
_CONTENT = struct.Struct(">HHQH")
_TAG = struct.Struct(">QB")
_PUBLISH = 0x003C0028
_DELIVER = 0x003C003C
_RETURN = 0x003C0032
_END = b"\xce"
_JSON = b"application/json"
_REPLY_TO = "amq.rabbitmq.reply-to"
ACK_DELAY = 0.001  # hutch.patterns.master.ACK_DELAY

# property flags; their fields follow the flags on the wire in this order (high bit first)
_CONTENT_TYPE = 1 << 15
_CONTENT_ENCODING = 1 << 14
_HEADERS = 1 << 13
_DELIVERY_MODE = 1 << 12
_PRIORITY = 1 << 11
_CORRELATION_ID = 1 << 10
_REPLY_TO_BIT = 1 << 9
_EXPIRATION = 1 << 8
_TIMESTAMP = 1 << 6
_TYPE = 1 << 5
_U64 = struct.Struct(">Q")


def _shortstr(value: bytes) -> bytes:
    return bytes((len(value),)) + value


def publish_frames(
    routing_key: str,
    body: bytes,
    *,
    mandatory: bool = False,
    delivery_mode: int = 0,
    priority: int | None = None,
    correlation_id: bytes = b"",
    reply_to: bytes = b"",
    expiration: bytes = b"",
    timestamp: int | None = None,
    type_: bytes = b"",
) -> bytes:
    """One ``basic.publish`` to the default exchange: method, content header and body frames
    (a JSON body; the properties given, in their order on the wire)."""
    key = routing_key.encode()
    method = _METHOD.pack(60, 40) + b"\x00\x00\x00" + _shortstr(key) + bytes((int(mandatory),))
    flags = _CONTENT_TYPE
    fields = [_shortstr(_JSON)]
    if delivery_mode:
        flags |= _DELIVERY_MODE
        fields.append(bytes((delivery_mode,)))
    if priority is not None:
        flags |= _PRIORITY
        fields.append(bytes((priority,)))
    for bit, value in (
        (_CORRELATION_ID, correlation_id),
        (_REPLY_TO_BIT, reply_to),
        (_EXPIRATION, expiration),
    ):
        if value:
            flags |= bit
            fields.append(_shortstr(value))
    if timestamp is not None:
        flags |= _TIMESTAMP
        fields.append(_U64.pack(timestamp))
    if type_:
        flags |= _TYPE
        fields.append(_shortstr(type_))
    header = _CONTENT.pack(60, 0, len(body), flags) + b"".join(fields)
    return b"".join(
        (
            _HEAD.pack(1, 1, len(method)),
            method,
            _END,
            _HEAD.pack(2, 1, len(header)),
            header,
            _END,
            _HEAD.pack(3, 1, len(body)),
            body,
            _END,
        )
    )


def _read_shortstr(data: bytes, pos: int) -> tuple[bytes, int]:
    size = data[pos]
    return data[pos + 1 : pos + 1 + size], pos + 1 + size


def _reply_fields(header: bytes) -> tuple[bytes, bytes]:
    """(correlation_id, reply_to) of a content header this module's peers sent (they set no
    ``headers`` table, so every field before reply-to is a short string or an octet)."""
    flags = int.from_bytes(header[12:14], "big")
    assert not flags & _HEADERS, "the floor client parses no header tables"
    pos = 14
    for bit in (_CONTENT_TYPE, _CONTENT_ENCODING):
        if flags & bit:
            _value, pos = _read_shortstr(header, pos)
    pos += bool(flags & _DELIVERY_MODE) + bool(flags & _PRIORITY)
    correlation_id = reply_to = b""
    if flags & _CORRELATION_ID:
        correlation_id, pos = _read_shortstr(header, pos)
    if flags & _REPLY_TO_BIT:
        reply_to, pos = _read_shortstr(header, pos)
    return correlation_id, reply_to


class FloorConnection(RawClient):
    """One connection with one channel; deliveries go to ``on_delivery(tag, header, body)``,
    and ``on_read_end()`` runs after each read."""

    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.on_delivery: Callable[[int, bytes, bytes], None] | None = None
        self.on_read_end: Callable[[], None] | None = None
        self.before_close: Callable[[], None] | None = None
        self._deliver_tag = 0
        self._header = b""

    async def declare_and_consume(self, queue: str, *, no_ack: bool, prefetch: int = 0) -> None:
        if queue != _REPLY_TO:
            await self.rpc(spec.Queue.Declare(queue=queue, auto_delete=True))
        if prefetch:
            await self.rpc(spec.Basic.Qos(prefetch_count=prefetch))
        await self.rpc(spec.Basic.Consume(queue=queue, no_ack=no_ack))

    async def close(self) -> None:  # type: ignore[override]  # awaited like the libraries'
        if self.before_close is not None:
            self.before_close()
        RawClient.close(self)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.on_read_end is not None:
            self.on_read_end()

    def _frame(self, kind: int, data: bytes, pos: int, end: int) -> None:
        if kind == 1:
            method_id = int.from_bytes(data[pos + 7 : pos + 11], "big")
            if method_id == _DELIVER:
                tag_at = pos + 12 + data[pos + 11]  # after the consumer tag
                self._deliver_tag = _TAG.unpack_from(data, tag_at)[0]
            elif method_id == _RETURN:
                self._deliver_tag = 0  # its content is not a delivery
            else:
                super()._frame(kind, data, pos, end)
        elif kind == 2:
            self._header = data[pos + 7 : end]
        elif kind == 3 and self._deliver_tag:
            assert self.on_delivery is not None
            self.on_delivery(self._deliver_tag, self._header, data[pos + 7 : end])
            self._deliver_tag = 0


async def connect(url: str, *, confirms: bool) -> FloorConnection:
    connection = await FloorConnection.connect(url, confirms=confirms)
    assert isinstance(connection, FloorConnection)
    connection.url = url
    return connection


class FloorMaster:
    """``await master.proxy.<queue>(**kwargs)``: a persistent, mandatory JSON task, returned
    once the broker confirmed it."""

    def __init__(self, connection: FloorConnection) -> None:
        self.connection = connection
        self.proxy = _Proxy(self._send)

    def _send(self, queue: str, kwargs: dict[str, Any]) -> Awaitable[None]:
        frames = publish_frames(queue, json.dumps(kwargs).encode(), mandatory=True, delivery_mode=2)
        return self.connection.publish(frames)


class _Proxy:
    def __init__(self, send: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> None:
        self._send = send

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        send = self._send
        return lambda **kwargs: send(name, kwargs)


async def serve_tasks(
    url: str, queue: str, handler: Callable[..., Awaitable[None]], *, prefetch: int
) -> FloorConnection:
    """A worker: decode each task, await the handler, and ack what it handled at most
    ``ACK_DELAY`` later, in one ``basic.ack(multiple)`` (as hutch's worker does: lone acks
    cost the broker work on the path of the next task)."""
    connection = await connect(url, confirms=False)
    last_tag = 0
    acked = 0
    timer: asyncio.TimerHandle | None = None

    def send_ack() -> None:
        nonlocal acked, timer
        if timer is not None:
            timer.cancel()
            timer = None
        if last_tag > acked:
            acked = last_tag
            connection.write(_ack_frame(last_tag))

    def on_delivery(tag: int, _header: bytes, body: bytes) -> None:
        nonlocal last_tag
        coro = handler(**json.loads(body))
        try:
            coro.send(None)
        except StopIteration:
            last_tag = tag
        else:  # pragma: no cover - the benchmark's handler never waits
            raise RuntimeError("the floor worker runs handlers that never wait")

    def on_read_end() -> None:
        nonlocal timer
        if last_tag > acked and timer is None:
            timer = connection.loop.call_later(ACK_DELAY, send_ack)

    connection.on_delivery = on_delivery
    connection.on_read_end = on_read_end
    connection.before_close = send_ack
    await connection.declare_and_consume(queue, no_ack=False, prefetch=prefetch)
    return connection


def _ack_frame(tag: int, *, multiple: bool = True) -> bytes:
    payload = _METHOD.pack(60, 80) + _TAG.pack(tag, int(multiple))
    return _HEAD.pack(1, 1, len(payload)) + payload + _END


class FloorRPC:
    """The caller, ``await rpc.proxy.<name>(**kwargs)`` with replies matched by correlation id,
    and the callee, ``await rpc.register(name, func, prefetch=...)``; each on a connection of its
    own without publisher confirms."""

    def __init__(self, connection: FloorConnection, expiration_ms: int) -> None:
        self.connection = connection
        self.expiration = str(expiration_ms).encode()
        self.proxy = _Proxy(self._call)
        self._pending: dict[bytes, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._callees: list[FloorConnection] = []
        connection.on_delivery = self._on_reply

    @classmethod
    async def create(cls, url: str, expiration_ms: int) -> FloorRPC:
        connection = await connect(url, confirms=False)
        rpc = cls(connection, expiration_ms)
        await connection.declare_and_consume(_REPLY_TO, no_ack=True)
        return rpc

    async def register(
        self, name: str, func: Callable[..., Awaitable[Any]], **_queue_options: Any
    ) -> None:
        """Serve ``name`` with hutch's default callee concurrency (prefetch 32)."""
        self._callees.append(await serve_calls(self.connection.url, name, func, prefetch=32))

    async def close(self) -> None:
        for connection in (*self._callees, self.connection):
            await connection.close()

    def _call(self, name: str, kwargs: dict[str, Any]) -> Awaitable[Any]:
        correlation_id = str(next(self._ids)).encode()
        future: asyncio.Future[Any] = self.connection.loop.create_future()
        self._pending[correlation_id] = future
        self.connection.write(
            publish_frames(
                name,
                json.dumps(kwargs).encode(),
                mandatory=True,
                delivery_mode=1,
                priority=5,
                correlation_id=correlation_id,
                reply_to=_REPLY_TO.encode(),
                expiration=self.expiration,
                timestamp=int(time.time()),
                type_=b"call",
            )
        )
        return future

    def _on_reply(self, _tag: int, header: bytes, body: bytes) -> None:
        correlation_id, _reply_to = _reply_fields(header)
        future = self._pending.pop(correlation_id, None)
        if future is not None and not future.done():
            future.set_result(json.loads(body))


async def serve_calls(
    url: str, name: str, func: Callable[..., Awaitable[Any]], *, prefetch: int
) -> FloorConnection:
    """A callee: decode the call, await ``func``, write the reply and the ack together."""
    connection = await connect(url, confirms=False)

    def on_delivery(tag: int, header: bytes, body: bytes) -> None:
        correlation_id, reply_to = _reply_fields(header)
        coro = func(**json.loads(body))
        try:
            coro.send(None)
        except StopIteration as done:
            result = done.value
        else:  # pragma: no cover - the benchmark's callee never waits
            raise RuntimeError("the floor callee runs functions that never wait")
        reply = publish_frames(
            reply_to.decode(),
            json.dumps(result).encode(),
            delivery_mode=1,
            correlation_id=correlation_id,
            type_=b"result",  # what aio-pika's and hutch's callers expect of a reply
        )
        connection.write(reply + _ack_frame(tag, multiple=False))

    connection.on_delivery = on_delivery
    await connection.declare_and_consume(name, no_ack=False, prefetch=prefetch)
    return connection
