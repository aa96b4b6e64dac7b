"""The embedded in-process broker: ``hutch.connect("memory://")``.

``memory://`` connects to the process's default broker; ``memory://NAME`` to the broker named
``NAME`` (made on first use, shared by every connection of the process; different names are
isolated). Connections and channels have the same methods and semantics as the AMQP client's,
so the patterns and your code run on it unchanged — without RabbitMQ, in your tests or a demo.

What it implements, as RabbitMQ 3.10 does (``tests/contract`` checks each against a real
broker): the default, direct, fanout, topic and headers exchanges, exchange-to-exchange
bindings and alternate exchanges; exclusive, auto-delete and server-named queues; the queue
arguments ``x-message-ttl``, ``x-dead-letter-exchange``, ``x-dead-letter-routing-key``,
``x-max-length``, ``x-max-length-bytes``, ``x-overflow`` and ``x-max-priority``; per-message
``expiration``; dead-lettering with RabbitMQ's ``x-death`` headers; mandatory returns and
publisher confirms; prefetch; ack/nack/reject with requeue; direct reply-to
(``amq.rabbitmq.reply-to``); and RabbitMQ's channel errors and reply texts.

Nothing is persisted, and durability flags only matter for redeclaration checks. For tests,
``get_broker(name)`` gives the broker with ``join``, ``messages``, ``errors`` and ``reset``.
"""

from __future__ import annotations

from hutch.memory.broker import MemoryBroker, get_broker
from hutch.memory.channel import MemoryChannel
from hutch.memory.connection import MemoryConnection, connect_memory

__all__ = ["MemoryBroker", "MemoryChannel", "MemoryConnection", "connect_memory", "get_broker"]
