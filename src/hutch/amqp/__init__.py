"""hutch's own AMQP 0-9-1 client (the codec is pamqp's, the hot path hand-written)."""

from hutch.amqp.channel import Channel
from hutch.amqp.connection import Connection, connect, connect_robust
from hutch.amqp.url import ConnectionParameters, parse_url

__all__ = [
    "Channel",
    "Connection",
    "ConnectionParameters",
    "connect",
    "connect_robust",
    "parse_url",
]
