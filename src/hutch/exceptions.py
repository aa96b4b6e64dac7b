"""Every error hutch raises, in one tree.

::

    HutchError
    ├── HutchConnectionError         also builtins.ConnectionError
    │   ├── ConnectError             no connection could be opened (refused, DNS, TLS, handshake)
    │   │   ├── AuthenticationError  the broker refused the login (403 ACCESS_REFUSED)
    │   │   ├── VirtualHostError     the broker refused the virtual host (530 NOT_ALLOWED)
    │   │   └── ConnectTimeout       also HutchTimeoutError
    │   ├── ConnectionLost           an open connection went away; in-flight work failed with it
    │   ├── ProtocolError            the peer sent bytes that are not AMQP 0-9-1; we hung up
    │   └── ConnectionClosed         the connection (or channel) was closed by this program
    ├── ChannelClosed                the broker closed a channel; the connection is still usable
    │   ├── AccessRefused            403
    │   ├── NotFound                 404
    │   ├── ResourceLocked           405
    │   └── PreconditionFailed       406
    ├── PublishError
    │   ├── Unroutable               a mandatory message was returned: no queue would take it
    │   └── PublishNacked            the broker refused to take responsibility for the message
    ├── MessageAlreadySettled        also RuntimeError: ack/nack/reject of a settled delivery
    ├── HutchTimeoutError            also builtins.TimeoutError
    │   ├── ConnectTimeout
    │   └── CallTimeout              an RPC call got no answer within its deadline
    ├── RemoteError                  an RPC callee raised an exception hutch does not re-create
    └── DecodeError                  a message body could not be deserialized

Misuse of the API (a bad argument) raises the builtin ``ValueError`` or ``TypeError``.
"""

from __future__ import annotations

from typing import Any


class HutchError(Exception):
    """Root of every error hutch raises."""


class HutchConnectionError(HutchError, ConnectionError):
    """The connection to the broker failed, was lost, or is closed."""


class ConnectError(HutchConnectionError):
    """A connection could not be opened; the message says why and what to check."""


class AuthenticationError(ConnectError):
    """The broker refused the user name or password (403 ACCESS_REFUSED during login)."""


class VirtualHostError(ConnectError):
    """The broker refused the virtual host: it does not exist or the user may not use it (530)."""


class HutchTimeoutError(HutchError, TimeoutError):
    """An operation did not finish within its deadline."""


class ConnectTimeout(ConnectError, HutchTimeoutError):
    """The broker did not complete the connection handshake in time."""


class ConnectionLost(HutchConnectionError):
    """An open connection went away: the network, a missed heartbeat, or the broker closed it.

    Attributes:
        reply_code: the AMQP reply code when the broker closed the connection, else ``None``.
        reply_text: the broker's text, when it gave one.
    """

    def __init__(
        self, message: str, *, reply_code: int | None = None, reply_text: str = ""
    ) -> None:
        super().__init__(message)
        self.reply_code = reply_code
        self.reply_text = reply_text


class ProtocolError(HutchConnectionError):
    """The peer sent something that is not valid AMQP 0-9-1; the connection was closed."""


class ConnectionClosed(HutchConnectionError):
    """The connection or channel was closed by this program and cannot be used any more."""


class ChannelClosed(HutchError):
    """The broker closed the channel; the connection stays usable.

    Attributes:
        reply_code: AMQP reply code (404 NOT_FOUND, 406 PRECONDITION_FAILED, ...).
        reply_text: the broker's explanation.
    """

    def __init__(self, reply_code: int, reply_text: str, *, method: str = "") -> None:
        during = f" (in reply to {method})" if method else ""
        super().__init__(f"channel closed by the broker: {reply_code} {reply_text}{during}")
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.method = method


class AccessRefused(ChannelClosed):
    """403: the user lacks the permission for this operation."""


class NotFound(ChannelClosed):
    """404: the exchange or queue does not exist."""


class ResourceLocked(ChannelClosed):
    """405: the queue is exclusive to another connection, or has an exclusive consumer."""


class PreconditionFailed(ChannelClosed):
    """406: the request contradicts the broker's state (e.g. redeclared with other flags)."""


_CHANNEL_ERRORS: dict[int, type[ChannelClosed]] = {
    403: AccessRefused,
    404: NotFound,
    405: ResourceLocked,
    406: PreconditionFailed,
}


def channel_error(reply_code: int, reply_text: str, method: str = "") -> ChannelClosed:
    """The ``ChannelClosed`` subclass for ``reply_code``, carrying the broker's text."""
    return _CHANNEL_ERRORS.get(reply_code, ChannelClosed)(reply_code, reply_text, method=method)


class PublishError(HutchError):
    """A published message was not accepted."""


class Unroutable(PublishError):
    """A ``mandatory`` message was returned by the broker: no queue is bound to take it.

    Attributes:
        exchange, routing_key: where it was published.
        reply_code, reply_text: the broker's reason (312 NO_ROUTE).
        message: the returned message.
    """

    def __init__(
        self, exchange: str, routing_key: str, reply_code: int, reply_text: str, message: Any
    ) -> None:
        where = f"exchange {exchange!r}" if exchange else "the default exchange"
        super().__init__(
            f"message to {where} with routing key {routing_key!r} was returned "
            f"({reply_code} {reply_text}): no queue is bound for it; declare the queue "
            "(or start a consumer that declares it) before publishing"
        )
        self.exchange = exchange
        self.routing_key = routing_key
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.message = message


class PublishNacked(PublishError):
    """The broker nacked the message (it could not store it); publish it again later."""


class MessageAlreadySettled(HutchError, RuntimeError):
    """``ack``/``nack``/``reject`` was called on a delivery that is already settled."""


class CallTimeout(HutchTimeoutError):
    """An RPC call got no reply within its deadline."""


class RemoteError(HutchError):
    """An RPC callee raised an exception that is not re-created locally.

    Attributes:
        type: the remote exception's class name.
        message: its text.
        args_: its arguments as sent.
        remote_traceback: the traceback formatted on the callee, if it was sent.
    """

    def __init__(
        self, type: str, message: str, args: list[Any] | None = None, remote_traceback: str = ""
    ) -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message
        self.args_ = list(args or [])
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"{self.type}: {self.message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback
        return text


class DecodeError(HutchError):
    """A message body could not be deserialized (bad bytes or an unexpected content type)."""
