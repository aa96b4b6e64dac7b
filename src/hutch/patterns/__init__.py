"""The seed's patterns: Master/Worker task distribution and RPC.

``from hutch.patterns import Master, NackMessage, RejectMessage, RPC``
"""

from hutch.patterns.base import MsgpackMixin, PickleMixin, Proxy, UnsafeSerializerWarning
from hutch.patterns.master import (
    JsonMaster,
    Master,
    MsgpackMaster,
    NackMessage,
    PickleMaster,
    RejectMessage,
    Retry,
    Worker,
)
from hutch.patterns.rpc import RPC, JsonRPC, MsgpackRPC, PickleRPC

__all__ = [
    "JsonMaster",
    "JsonRPC",
    "Master",
    "MsgpackMaster",
    "MsgpackMixin",
    "MsgpackRPC",
    "NackMessage",
    "PickleMaster",
    "PickleMixin",
    "PickleRPC",
    "Proxy",
    "RPC",
    "RejectMessage",
    "Retry",
    "UnsafeSerializerWarning",
    "Worker",
]
