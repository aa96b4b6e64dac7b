"""A real hutch ``Channel`` on a real ``Link``, with no broker and no socket.

The hot-path tests (``tests/unit/test_hot_path.py``) and ``bench/micro_hot_path.py`` both drive
the channel this way: frames from the "broker" go to ``Link.data_received`` and what the client
writes goes to the transport they pass in.
"""

from __future__ import annotations

from typing import Any

from hutch.abc import ChannelState
from hutch.amqp.channel import Channel
from hutch.amqp.link import Link

FRAME_MAX = 131072


class _Connection:
    """What a channel asks of its connection, for a plain connection that never drops."""

    robust = False
    reconnect_timeout = 1.0
    _frame_max = FRAME_MAX

    def _forget_channel(self, channel: object) -> None:
        pass


def open_offline_channel(transport: Any) -> tuple[Link, Channel]:
    """Channel 1, open, with publisher confirms, on a link that writes to ``transport`` (an
    object with ``write``, ``get_extra_info`` and ``is_closing``)."""
    channels: dict[int, Channel] = {}
    link = Link(channels, lambda *_: None, lambda *_: None, FRAME_MAX)
    link.transport = transport
    channel = Channel(_Connection(), 1, True)  # type: ignore[arg-type]
    channel._link = link
    channel._state = ChannelState.OPEN
    channels[1] = channel
    return link, channel
