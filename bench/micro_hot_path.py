"""The hot path without a broker: CPU per message of hutch's own code, nothing else.

Run::

    .venv/bin/python bench/micro_hot_path.py [--repeat 7]

A real ``Channel`` on a real ``Link`` whose transport only counts bytes:

- ``deliver+ack``: a prepared byte stream of ``basic.deliver`` + content header + body frames,
  fed to ``Link.data_received`` in 64 KiB reads; a plain callback acks each message.
- ``deliver+ack async``: the same with an ``async def`` callback (a task per delivery).
- ``publish+confirm``: ``publish_nowait`` of 1000 messages, then one ``basic.ack`` with
  ``multiple=True`` resolving them, repeated.
- ``publish+confirm (props)``: the same with an RPC-like set of properties.
- ``publish one by one``: ``await channel.publish(...)`` in a loop against a transport that
  confirms each publish on the next loop iteration (an infinitely fast broker), next to
  ``raw_client.py`` doing the same: what hutch adds to a round trip.

Each figure is the best of ``--repeat`` runs (the least disturbed by other processes), in µs of
CPU per message. Socket reads/writes, the event loop's polling and the broker are left out: this
measures what a change to the codec or the channel saves.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

import harness
import hutch
from hutch.amqp import frames
from hutch.amqp.channel import Channel, _Consumer
from hutch.amqp.link import Link

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.offline import open_offline_channel

COUNT = 20000


class _Transport:
    """Stands in for the socket: counts what would be sent."""

    def __init__(self) -> None:
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.sent += len(data)

    def get_extra_info(self, name: str) -> Any:
        return None

    def is_closing(self) -> bool:
        return False


def _setup() -> tuple[Link, Channel, _Transport]:
    transport = _Transport()
    link, channel = open_offline_channel(transport)
    return link, channel, transport


def _deliveries(tag: str, count: int, properties: spec.Basic.Properties) -> bytes:
    out = []
    for number in range(1, count + 1):
        out.append(
            pamqp_frame.marshal(
                spec.Basic.Deliver(
                    consumer_tag=tag, delivery_tag=number, exchange="", routing_key="bench.q"
                ),
                1,
            )
        )
        out.append(pamqp_frame.marshal(pamqp_header.ContentHeader(0, 32, properties), 1))
        out.append(frames.FRAME_HEAD.pack(3, 1, 32) + b"x" * 32 + b"\xce")
    return b"".join(out)


async def deliver_ack(sync: bool, properties: spec.Basic.Properties) -> float:
    link, channel, _transport = _setup()
    tag = "hutch.bench.1"
    done, on_message = harness.acking_consumer(COUNT, sync=sync)
    method = spec.Basic.Consume(queue="bench.q", consumer_tag=tag)
    channel._consumers[tag] = _Consumer(method, on_message)
    stream = _deliveries(tag, COUNT, properties)
    start = time.process_time()
    for offset in range(0, len(stream), 65536):
        link.data_received(stream[offset : offset + 65536])
        await asyncio.sleep(0)
    await done
    return (time.process_time() - start) / COUNT * 1e6


async def publish_confirm(message: hutch.Message) -> float:
    link, channel, _transport = _setup()
    window = 1000
    start = time.process_time()
    for batch in range(COUNT // window):
        futures = [channel.publish_nowait(message, "bench.q") for _ in range(window)]
        ack = frames.encode_ack(1, (batch + 1) * window, True)
        await asyncio.sleep(0)  # the link flushes
        link.data_received(ack)
        for future in futures:
            await future
    return (time.process_time() - start) / COUNT * 1e6


class _EchoTransport(_Transport):
    """Answers every publish it is given with a ``basic.ack`` on the next loop iteration: an
    infinitely fast broker, so a round trip costs only the client (and the event loop)."""

    def __init__(self, protocol: asyncio.Protocol, seq: list[int]) -> None:
        super().__init__()
        self.protocol = protocol
        self.seq = seq
        self.loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        self.seq[0] += 1
        self.loop.call_soon(self.protocol.data_received, frames.encode_ack(1, self.seq[0], False))


async def publish_one_by_one(message: hutch.Message) -> float:
    link, channel, _transport = _setup()
    link.transport = _EchoTransport(link, [0])  # type: ignore[assignment]
    count = COUNT // 4
    start = time.process_time()
    for _ in range(count):
        await channel.publish(message, "bench.q")
    return (time.process_time() - start) / count * 1e6


async def raw_one_by_one() -> float:
    sys.path.insert(0, str(Path(__file__).parent))
    from raw_client import RawClient

    client = RawClient()
    client.transport = _EchoTransport(client, [0])  # type: ignore[assignment]
    data = client.publish_frames("bench.q", b"x" * 32)
    count = COUNT // 4
    start = time.process_time()
    for _ in range(count):
        await client.publish(data)
    return (time.process_time() - start) / count * 1e6


RPC_PROPS = {
    "content_type": "application/json",
    "correlation_id": "8f0c2a4e-5b7d-4c3e-9a1b-2d3e4f5a6b7c",
    "reply_to": "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OC4xMjM0NTY3",
    "message_id": "6a1f0f9c",
    "delivery_mode": 2,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    plain = spec.Basic.Properties()
    rpc = spec.Basic.Properties(**RPC_PROPS)
    cases = {
        "deliver+ack": lambda: deliver_ack(True, plain),
        "deliver+ack (props)": lambda: deliver_ack(True, rpc),
        "deliver+ack async": lambda: deliver_ack(False, plain),
        "publish+confirm": lambda: publish_confirm(hutch.Message(b"x" * 32)),
        "publish+confirm (props)": lambda: publish_confirm(hutch.Message(b"x" * 32, **RPC_PROPS)),
        "publish one by one": lambda: publish_one_by_one(hutch.Message(b"x" * 32)),
        "  raw_client.py, same": raw_one_by_one,
    }
    for name, case in cases.items():
        best = min(asyncio.run(case()) for _ in range(args.repeat))
        print(f"{name:<26} {best:6.2f} µs/msg")


if __name__ == "__main__":
    main()
