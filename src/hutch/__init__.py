"""hutch: Master/Worker and RPC over RabbitMQ, on an asyncio AMQP client of its own.

Everything public is importable from here (``hutch.connect``, ``hutch.Message``, the errors);
the patterns live in ``hutch.patterns``.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from hutch._connect import connect, connect_robust
from hutch.abc import Channel, ChannelState, Connection, ConnectionState, QueueInfo
from hutch.app import App
from hutch.exceptions import (
    AccessRefused,
    AuthenticationError,
    CallTimeout,
    ChannelClosed,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    ConnectTimeout,
    DecodeError,
    HutchConnectionError,
    HutchError,
    HutchTimeoutError,
    MessageAlreadySettled,
    NotFound,
    PreconditionFailed,
    ProtocolError,
    PublishError,
    PublishNacked,
    RemoteError,
    ResourceLocked,
    Unroutable,
    VirtualHostError,
)
from hutch.message import DeliveryMode, IncomingMessage, Message

try:
    __version__ = _version("hutch")
except _PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "AccessRefused",
    "App",
    "AuthenticationError",
    "CallTimeout",
    "Channel",
    "ChannelClosed",
    "ChannelState",
    "ConnectError",
    "ConnectTimeout",
    "Connection",
    "ConnectionClosed",
    "ConnectionLost",
    "ConnectionState",
    "DecodeError",
    "DeliveryMode",
    "HutchConnectionError",
    "HutchError",
    "HutchTimeoutError",
    "IncomingMessage",
    "Message",
    "MessageAlreadySettled",
    "NotFound",
    "PreconditionFailed",
    "ProtocolError",
    "PublishError",
    "PublishNacked",
    "QueueInfo",
    "RemoteError",
    "ResourceLocked",
    "Unroutable",
    "VirtualHostError",
    "__version__",
    "connect",
    "connect_robust",
]
