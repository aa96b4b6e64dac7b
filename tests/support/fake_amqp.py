"""A scripted AMQP 0-9-1 server on a loopback socket, for unit tests of the client.

Each accepted connection runs a test-supplied coroutine ``script(conn)`` that reads what the
client sends and answers whatever the test wants, including bytes no broker would send. A
script's exception is re-raised when the ``FakeBroker`` context exits, so a failing assertion
inside a script fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from pamqp import heartbeat as pamqp_heartbeat
from pamqp.base import Frame as Method

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT = pamqp_heartbeat.Heartbeat.marshal()

Script = Callable[["FakeConnection"], Awaitable[None]]


def raw_frame(kind: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    """One frame with any type, payload and end byte (for malformed input)."""
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + bytes((end,))


def method_frame(channel: int, method: Method) -> bytes:
    return pamqp_frame.marshal(method, channel)


def content_frames(channel: int, body: bytes, **properties: Any) -> bytes:
    """A content header and one body frame for ``body``."""
    head = pamqp_header.ContentHeader(
        body_size=len(body), properties=spec.Basic.Properties(**properties)
    )
    data = pamqp_frame.marshal(head, channel)
    if body:
        data += raw_frame(3, channel, body)
    return data


class FakeConnection:
    """The server side of one client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.heartbeats = 0
        self.heartbeat_event = asyncio.Event()
        self.start_ok: spec.Connection.StartOk | None = None
        self.tune_ok: spec.Connection.TuneOk | None = None
        self.open: spec.Connection.Open | None = None
        self.methods: list[tuple[int, Method]] = []

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def send_method(self, channel: int, method: Method) -> None:
        self.writer.write(method_frame(channel, method))

    async def read_frame(self, timeout: float = 5) -> tuple[int, int, bytes]:
        """The next frame: (type, channel, payload). Heartbeats are counted and returned."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readexactly(7)
            kind, channel, size = struct.unpack(">BHI", head)
            payload = await self.reader.readexactly(size)
            end = await self.reader.readexactly(1)
        if end != b"\xce":
            raise AssertionError(f"client sent a frame ending in {end!r}")
        if kind == 8:
            self.heartbeats += 1
            self.heartbeat_event.set()
        return kind, channel, payload

    async def read_method(self, timeout: float = 5) -> tuple[int, Method]:
        """The next method frame (heartbeats skipped; content frames are an error)."""
        while True:
            kind, channel, payload = await self.read_frame(timeout)
            if kind == 8:
                continue
            if kind != 1:
                raise AssertionError(f"expected a method frame, got a frame of type {kind}")
            _, _, method = pamqp_frame.unmarshal(raw_frame(kind, channel, payload))
            assert isinstance(method, Method)
            self.methods.append((channel, method))
            return channel, method

    async def expect(self, cls: type[Method], timeout: float = 5) -> tuple[int, Any]:
        """Read the next method and check that it is a ``cls``."""
        channel, method = await self.read_method(timeout)
        if not isinstance(method, cls):
            raise AssertionError(f"expected {cls.name}, got {method.name}")
        return channel, method

    async def read_publish(self, timeout: float = 5) -> tuple[int, spec.Basic.Publish, bytes]:
        """A ``basic.publish`` with its content: (channel, method, body)."""
        channel, method = await self.expect(spec.Basic.Publish, timeout)
        return channel, method, await _read_content(self)

    async def handshake(
        self,
        *,
        heartbeat: int = 0,
        frame_max: int = 131072,
        channel_max: int = 2047,
        mechanisms: str = "PLAIN AMQPLAIN",
    ) -> None:
        """Play the broker's side of connection.start/tune/open."""
        async with asyncio.timeout(5):
            header = await self.reader.readexactly(8)
        assert header == PROTOCOL_HEADER, header
        self.send_method(
            0,
            spec.Connection.Start(
                server_properties={"product": "fake", "capabilities": {}},
                mechanisms=mechanisms,
                locales="en_US",
            ),
        )
        _, self.start_ok = await self.expect(spec.Connection.StartOk)
        self.send_method(
            0,
            spec.Connection.Tune(channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat),
        )
        _, self.tune_ok = await self.expect(spec.Connection.TuneOk)
        _, self.open = await self.expect(spec.Connection.Open)
        self.send_method(0, spec.Connection.OpenOk())

    async def open_channel(self, *, confirms: bool = True) -> int:
        """Answer channel.open (and confirm.select); return the channel number."""
        channel, _ = await self.expect(spec.Channel.Open)
        self.send_method(channel, spec.Channel.OpenOk())
        if confirms:
            await self.expect(spec.Confirm.Select)
            self.send_method(channel, spec.Confirm.SelectOk())
        return channel

    async def wait_closed(self, timeout: float = 5) -> None:
        """Wait until the client hangs up (reading and dropping whatever it still sends)."""
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass

    def hang_up(self) -> None:
        self.writer.transport.abort()


class FakeBroker:
    """Listen on 127.0.0.1 and run ``script`` for every connection the client opens."""

    def __init__(self, script: Script, port: int = 0) -> None:
        self.script = script
        self.connections: list[FakeConnection] = []
        self.accepted = asyncio.Event()
        self.errors: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = port

    def url(self, query: str = "", password: str = "guest", vhost: str = "") -> str:
        suffix = f"?{query}" if query else ""
        return f"amqp://guest:{password}@127.0.0.1:{self.port}/{vhost}{suffix}"

    async def __aenter__(self) -> FakeBroker:
        await self.listen()
        return self

    async def listen(self) -> None:
        """Accept connections (again, on the same port)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    def stop_listening(self) -> None:
        """Refuse new connections (the open ones stay)."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop_listening()
        for conn in self.connections:
            conn.hang_up()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self.errors and exc_info[0] is None:
            raise self.errors[0]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = FakeConnection(reader, writer)
        self.connections.append(conn)
        self.accepted.set()
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.script(conn)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()


Hook = Callable[["FakeConnection", int, Method], Awaitable[bool]]


async def serve(conn: FakeConnection, hook: Hook | None = None) -> None:
    """Answer the client like a well-behaved broker until it closes the connection.

    ``hook(conn, channel, method)`` sees every method first; when it returns True it has dealt
    with the method itself. Publishes are read with their content and confirmed when the
    channel is in confirm mode; acks, nacks and rejects are recorded in ``conn.methods``.
    """
    confirming: dict[int, int] = {}
    while True:
        channel, method = await conn.read_method(timeout=3600)
        if isinstance(method, spec.Basic.Publish):
            await _read_content(conn)
        if hook is not None and await hook(conn, channel, method):
            continue
        reply: Method | None = None
        if isinstance(method, spec.Channel.Open):
            confirming.pop(channel, None)
            reply = spec.Channel.OpenOk()
        elif isinstance(method, spec.Confirm.Select):
            confirming[channel] = 0
            reply = spec.Confirm.SelectOk()
        elif isinstance(method, spec.Basic.Qos):
            reply = spec.Basic.QosOk()
        elif isinstance(method, spec.Exchange.Declare):
            reply = spec.Exchange.DeclareOk()
        elif isinstance(method, spec.Exchange.Delete):
            reply = spec.Exchange.DeleteOk()
        elif isinstance(method, spec.Exchange.Bind):
            reply = spec.Exchange.BindOk()
        elif isinstance(method, spec.Queue.Declare):
            reply = spec.Queue.DeclareOk(
                queue=method.queue or "amq.gen-fake", message_count=0, consumer_count=0
            )
        elif isinstance(method, spec.Queue.Bind):
            reply = spec.Queue.BindOk()
        elif isinstance(method, spec.Queue.Purge):
            reply = spec.Queue.PurgeOk(message_count=0)
        elif isinstance(method, spec.Queue.Delete):
            reply = spec.Queue.DeleteOk(message_count=0)
        elif isinstance(method, spec.Basic.Consume):
            reply = spec.Basic.ConsumeOk(consumer_tag=method.consumer_tag)
        elif isinstance(method, spec.Basic.Cancel):
            reply = spec.Basic.CancelOk(consumer_tag=method.consumer_tag)
        elif isinstance(method, spec.Basic.Get):
            reply = spec.Basic.GetEmpty()
        elif isinstance(method, spec.Basic.Publish):
            if channel in confirming:
                confirming[channel] += 1
                reply = spec.Basic.Ack(delivery_tag=confirming[channel])
        elif isinstance(method, spec.Channel.Close):
            confirming.pop(channel, None)
            reply = spec.Channel.CloseOk()
        elif isinstance(method, spec.Connection.Close):
            conn.send_method(0, spec.Connection.CloseOk())
            await conn.writer.drain()
            return
        if reply is not None:
            conn.send_method(channel, reply)


def handshake_and_serve(hook: Hook | None = None, **handshake: Any) -> Script:
    """The usual script: the handshake (``handshake`` are its options), then ``serve``."""

    async def script(conn: FakeConnection) -> None:
        await conn.handshake(**handshake)
        await serve(conn, hook)

    return script


async def _read_content(conn: FakeConnection) -> bytes:
    kind, _, payload = await conn.read_frame()
    assert kind == 2, kind
    size = struct.unpack_from(">Q", payload, 4)[0]
    body = b""
    while len(body) < size:
        kind, _, chunk = await conn.read_frame()
        assert kind == 3, kind
        body += chunk
    return body


async def close_channel(
    conn: FakeConnection, channel: int, code: int, text: str, method: Method
) -> None:
    """Close ``channel`` with an error in answer to ``method``, as a broker does: send
    channel.close, then ignore what the client had already sent until its close-ok."""
    conn.send_method(
        channel,
        spec.Channel.Close(
            reply_code=code,
            reply_text=text,
            class_id=method.index >> 16,
            method_id=method.index & 0xFFFF,
        ),
    )
    while True:
        number, answer = await conn.read_method()
        if isinstance(answer, spec.Basic.Publish):
            await _read_content(conn)
        if number == channel and isinstance(answer, spec.Channel.CloseOk):
            return
