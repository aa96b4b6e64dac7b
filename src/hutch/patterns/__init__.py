"""The seed's patterns: Master/Worker task distribution and RPC.

``from hutch.patterns import Master, NackMessage, RejectMessage, RPC``
"""

from hutch.patterns.base import MsgpackMixin, PickleMixin, Proxy, UnsafeSerializerWarning

__all__ = [
    "MsgpackMixin",
    "PickleMixin",
    "Proxy",
    "UnsafeSerializerWarning",
]
