"""What every channel and connection has, whatever its transport: a state, listeners or
callbacks, ``async with``.

``hutch.amqp.Channel`` and ``hutch.memory.MemoryChannel`` both build on ``ChannelBase``, so the
listener semantics (called in order, a raising listener is logged and the others still run)
live in one place; ``hutch.amqp.Connection`` and ``hutch.memory.MemoryConnection`` on
``ConnectionBase``.
"""

from __future__ import annotations

import logging
from typing import Any, Self

from hutch.abc import (
    ChannelState,
    CloseCallback,
    CloseListener,
    ConnectionCallback,
    ConnectionState,
    DisconnectCallback,
    ReturnListener,
)
from hutch.exceptions import Unroutable

log = logging.getLogger("hutch")


class ChannelBase:
    """State, return, close and error listeners, and ``async with`` for a channel."""

    _state: ChannelState

    def __init__(self) -> None:
        self._return_listeners: list[ReturnListener] = []
        self._close_listeners: list[CloseListener] = []
        self._error_listeners: list[CloseListener] = []

    @property
    def state(self) -> ChannelState:
        """``OPENING`` (also while a robust connection restores it), ``OPEN`` or ``CLOSED``."""
        return self._state

    @property
    def is_closed(self) -> bool:
        """Whether the channel is closed for good (a robust channel that is reopening is not)."""
        return self._state is ChannelState.CLOSED

    def add_return_listener(self, listener: ReturnListener) -> None:
        """Call ``listener(Unroutable)`` for every mandatory message no queue took."""
        self._return_listeners.append(listener)

    def remove_return_listener(self, listener: ReturnListener) -> None:
        self._return_listeners.remove(listener)

    def add_close_listener(self, listener: CloseListener) -> None:
        """Call ``listener(channel, error)`` once the channel is closed for good."""
        self._close_listeners.append(listener)

    def remove_close_listener(self, listener: CloseListener) -> None:
        self._close_listeners.remove(listener)

    def add_error_listener(self, listener: CloseListener) -> None:
        """Call ``listener(channel, error)`` each time the broker closes the channel with an
        error (a ``ChannelClosed``), also when a robust connection then reopens it: what was
        in flight on it is lost, direct reply-to replies included."""
        self._error_listeners.append(listener)

    def remove_error_listener(self, listener: CloseListener) -> None:
        self._error_listeners.remove(listener)

    def _notify_returned(self, error: Unroutable) -> None:
        for listener in list(self._return_listeners):
            try:
                listener(error)
            except Exception:
                log.exception("a return listener raised")

    def _notify_closed(self, error: BaseException | None) -> None:
        for listener in list(self._close_listeners):
            try:
                listener(self, error)
            except Exception:
                log.exception("a channel close listener raised")

    def _notify_error(self, error: BaseException) -> None:
        for listener in list(self._error_listeners):
            try:
                listener(self, error)
            except Exception:
                log.exception("a channel error listener raised")

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


class ConnectionBase:
    """State, reconnect, disconnect and close callbacks, and ``async with`` for a connection.

    The transport runs the callbacks (a memory connection is never lost, so it only ever runs
    its close callbacks).
    """

    _state: ConnectionState

    def __init__(self) -> None:
        self._reconnect_callbacks: list[ConnectionCallback] = []
        self._disconnect_callbacks: list[DisconnectCallback] = []
        self._close_callbacks: list[CloseCallback] = []

    @property
    def state(self) -> ConnectionState:
        """``CONNECTED``, ``RECONNECTING`` (robust only), ``CLOSING`` or ``CLOSED``."""
        return self._state

    @property
    def is_closed(self) -> bool:
        """True once the connection is closed for good (lost without ``robust``, or closed)."""
        return self._state is ConnectionState.CLOSED

    @property
    def is_connected(self) -> bool:
        return self._state is ConnectionState.CONNECTED

    def add_reconnect_callback(self, callback: ConnectionCallback) -> None:
        """Call ``callback(connection)`` after each successful reconnect and restore."""
        self._reconnect_callbacks.append(callback)

    def add_disconnect_callback(self, callback: DisconnectCallback) -> None:
        """Call ``callback(connection, error)`` each time the connection to the broker is lost
        (a robust connection then reconnects; by then every waiter has had the error)."""
        self._disconnect_callbacks.append(callback)

    def add_close_callback(self, callback: CloseCallback) -> None:
        """Call ``callback(connection, error)`` when the connection closes for good (``error``
        is ``None`` after ``close()``)."""
        self._close_callbacks.append(callback)

    async def close(self, reason: str = "") -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    @staticmethod
    def _check_ack_delay(ack_delay: object) -> None:
        """``channel(ack_delay=...)`` takes seconds: a number, 0 or more."""
        if isinstance(ack_delay, bool) or not isinstance(ack_delay, (int, float)) or ack_delay < 0:
            raise ValueError(f"ack_delay must be a number of seconds, 0 or more, not {ack_delay!r}")
