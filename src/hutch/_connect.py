"""``hutch.connect`` and ``hutch.connect_robust``: pick the transport from the URL's scheme."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hutch import amqp
from hutch.abc import Connection

MEMORY_SCHEME = "memory://"


def _is_memory(url: object) -> bool:
    return isinstance(url, str) and url.startswith(MEMORY_SCHEME)


async def connect(url: str = "amqp://guest:guest@localhost/", **options: Any) -> Connection:
    """Open a connection: ``amqp://``/``amqps://`` to RabbitMQ, ``memory://NAME`` to the
    embedded broker. A lost AMQP connection stays lost; see ``connect_robust``."""
    if _is_memory(url):
        from hutch.memory import connect_memory

        return await connect_memory(url, **options)
    return await amqp.connect(url, **options)


async def connect_robust(
    url: str | Sequence[str] = "amqp://guest:guest@localhost/", **options: Any
) -> Connection:
    """Open a connection that reconnects by itself and restores its channels, queues,
    bindings and consumers. Takes one URL, a list, or ``amqp://u:p@host1,host2/``.

    See ``hutch.amqp.connect_robust`` for the reconnection options.
    """
    if isinstance(url, str) and _is_memory(url):
        from hutch.memory import connect_memory

        return await connect_memory(url, robust=True, **options)
    return await amqp.connect_robust(url, **options)
