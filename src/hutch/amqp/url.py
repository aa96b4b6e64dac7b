"""Parse ``amqp://`` and ``amqps://`` URLs into connection parameters.

The format is RabbitMQ's URI spec: ``amqp[s]://user:password@host:port/vhost?option=value``, with
user, password and vhost percent-decoded. An empty path means the default vhost ``/``; to name
the vhost ``/`` explicitly write ``%2F``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

DEFAULT_HEARTBEAT = 60
DEFAULT_FRAME_MAX = 131072
DEFAULT_CHANNEL_MAX = 2047
DEFAULT_CONNECTION_TIMEOUT = 10.0


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _heartbeat(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 (off) and 65535 seconds")
    return value


def _channel_max(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 (no limit) and 65535")
    return value


def _frame_max(text: str) -> int:
    value = int(text)
    if value < 4096:
        raise ValueError("must be at least 4096 (AMQP's minimum frame size)")
    return value


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "name": ("name", str),
    "connection_name": ("name", str),
    "heartbeat": ("heartbeat", _heartbeat),
    "connection_timeout": ("connection_timeout", _seconds),
    "timeout": ("connection_timeout", _seconds),
    "channel_max": ("channel_max", _channel_max),
    "frame_max": ("frame_max", _frame_max),
    "cafile": ("cafile", str),
    "certfile": ("certfile", str),
    "keyfile": ("keyfile", str),
    "no_verify_ssl": ("no_verify_ssl", _flag),
}


@dataclass(frozen=True)
class ConnectionParameters:
    """Where and how to connect; ``password`` is never shown in ``repr`` or ``str``."""

    host: str = "localhost"
    port: int = 5672
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    virtual_host: str = "/"
    tls: bool = False
    name: str | None = None
    heartbeat: int = DEFAULT_HEARTBEAT
    connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT
    channel_max: int = DEFAULT_CHANNEL_MAX
    frame_max: int = DEFAULT_FRAME_MAX
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    no_verify_ssl: bool = False

    @property
    def safe_url(self) -> str:
        """The URL with the password masked, for logs and error messages."""
        scheme = "amqps" if self.tls else "amqp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        vhost = quote(self.virtual_host, safe="")
        return f"{scheme}://{quote(self.username, safe='')}:******@{host}:{self.port}/{vhost}"

    def __str__(self) -> str:
        return self.safe_url

    def with_options(self, **options: Any) -> ConnectionParameters:
        """A copy with some fields replaced (keyword names as in the URL query)."""
        return replace(self, **options)


def parse_url(url: str) -> ConnectionParameters:
    """Parse an AMQP URL.

    Raises:
        ValueError: the URL is not ``amqp://`` or ``amqps://``, or an option has a bad value;
            the message names the part that is wrong (never the password).
    """
    if not isinstance(url, str):
        raise TypeError(f"an AMQP URL must be a str, not {type(url).__name__}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in {"amqp", "amqps"}:
        # Only the scheme is shown: the rest may hold a password.
        shown = f"{parts.scheme}://" if "://" in url else "(none)"
        raise ValueError(f"unsupported URL scheme {shown!r}: use amqp://, amqps:// or memory://")
    tls = scheme == "amqps"
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in AMQP URL: {exc}") from None
    path = parts.path
    vhost = "/" if path in {"", "/"} else unquote(path[1:])
    values: dict[str, Any] = {}
    for key, text in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _OPTIONS:
            known = ", ".join(sorted(_OPTIONS))
            raise ValueError(f"unknown AMQP URL option {key!r}; known options: {known}")
        attr, convert = _OPTIONS[key]
        try:
            values[attr] = convert(text)
        except ValueError as exc:
            raise ValueError(f"bad value {text!r} for URL option {key!r}: {exc}") from None
    return ConnectionParameters(
        host=parts.hostname or "localhost",
        port=port or (5671 if tls else 5672),
        username=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        virtual_host=vhost,
        tls=tls,
        **values,
    )
