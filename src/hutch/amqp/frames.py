"""AMQP 0-9-1 frame encoding and decoding.

The frames that move messages (``basic.publish`` with its content header and body frames,
``basic.deliver``, ``basic.ack``/``nack``/``reject``, publisher confirms and the content header)
are packed and parsed here by hand, because they are where a client spends its time. Every other
method goes through pamqp. ``tests/unit/test_frames.py`` proves the hand-written frames equal
pamqp's, byte for byte, over generated inputs.

Frame layout: type (1 byte), channel (2), payload size (4), payload, 0xCE.
"""

from __future__ import annotations

import datetime
import struct
from typing import TYPE_CHECKING, Any

from pamqp import commands as _commands
from pamqp import encode as _pamqp_encode
from pamqp import frame as _pamqp_frame
from pamqp.base import Frame as Method

from hutch.exceptions import ProtocolError

if TYPE_CHECKING:
    from hutch.message import IncomingMessage, Message

__all__ = ["Method"]

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_OVERHEAD = 8

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"

# class id << 16 | method id
BASIC_DELIVER = 0x003C003C
BASIC_ACK = 0x003C0050
BASIC_NACK = 0x003C0078
BASIC_RETURN = 0x003C0032
BASIC_GET_OK = 0x003C0047

FRAME_HEAD = struct.Struct(">BHI")
_METHOD_ID = struct.Struct(">I")
_CONTENT_HEAD = struct.Struct(">HHQH")
_CONTENT_START = struct.Struct(">HHQ")
_ACK = struct.Struct(">BHIHHQB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TAG_BITS = struct.Struct(">QB")

_PUBLISH_PREFIX = b"\x00\x3c\x00\x28\x00\x00"  # class 60, method 40, reserved-1
_UTC = datetime.UTC
_from_timestamp = datetime.datetime.fromtimestamp


def shortstr(value: str, what: str = "value") -> bytes:
    """Encode an AMQP short string: a length byte and up to 255 bytes of UTF-8."""
    data = value.encode()
    if len(data) > 255:
        raise ValueError(f"{what} is {len(data)} bytes long; AMQP allows at most 255")
    return bytes((len(data),)) + data


def encode_method(channel: int, method: Method) -> bytes:
    """Encode any method frame through pamqp."""
    return _pamqp_frame.marshal(method, channel)


def _timestamp_seconds(value: datetime.datetime | float) -> bytes:
    """The wire form of a timestamp: whole seconds since the epoch (naive datetimes are UTC,
    as pamqp takes them)."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=_UTC)
        seconds = int(value.timestamp())
    else:
        seconds = int(value)
    if not 0 <= seconds < 1 << 64:
        raise ValueError(
            f"timestamp must be a datetime or seconds since 1970 that AMQP can carry, not {value!r}"
        )
    return _U64.pack(seconds)


def expiration_text(seconds: float) -> str:
    """The wire form of an expiration: whole milliseconds as text."""
    if seconds < 0:
        raise ValueError(f"expiration must be 0 or more seconds, not {seconds!r}")
    return str(round(seconds * 1000))


def encode_properties(message: Message) -> bytes:
    """Encode the property flags and values of a content header (pamqp's rules: ``None`` and
    ``""`` are left out)."""
    flags = 0
    parts: list[bytes] = []
    append = parts.append
    value: Any = message.content_type
    if value:
        flags |= 0x8000
        append(shortstr(value, "content_type"))
    value = message.content_encoding
    if value:
        flags |= 0x4000
        append(shortstr(value, "content_encoding"))
    if message._raw_headers is not None:
        flags |= 0x2000
        append(message._raw_headers)
    elif message._headers is not None:
        flags |= 0x2000
        try:
            append(_pamqp_encode.field_table(message._headers))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"message headers cannot be encoded for AMQP: {exc}") from None
    value = message.delivery_mode
    if value is not None:
        if value not in (1, 2):
            raise ValueError(
                f"delivery_mode must be 1 (transient) or 2 (persistent), not {value!r}"
            )
        flags |= 0x1000
        append(bytes((value,)))
    value = message.priority
    if value is not None:
        if not 0 <= value <= 255:
            raise ValueError(f"priority must be between 0 and 255, not {value!r}")
        flags |= 0x0800
        append(bytes((value,)))
    value = message.correlation_id
    if value:
        flags |= 0x0400
        append(shortstr(value, "correlation_id"))
    value = message.reply_to
    if value:
        flags |= 0x0200
        append(shortstr(value, "reply_to"))
    value = message.expiration
    if value is not None:
        flags |= 0x0100
        append(shortstr(expiration_text(value)))
    value = message.message_id
    if value:
        flags |= 0x0080
        append(shortstr(value, "message_id"))
    value = message.timestamp
    if value is not None:
        flags |= 0x0040
        append(_timestamp_seconds(value))
    value = message.type
    if value:
        flags |= 0x0020
        append(shortstr(value, "type"))
    value = message.user_id
    if value:
        flags |= 0x0010
        append(shortstr(value, "user_id"))
    value = message.app_id
    if value:
        flags |= 0x0008
        append(shortstr(value, "app_id"))
    return _U16.pack(flags) + b"".join(parts)


def encode_publish(
    channel: int,
    exchange: bytes,
    routing_key: bytes,
    mandatory: bool,
    message: Message,
    frame_max: int,
) -> bytes:
    """Encode ``basic.publish``, its content header and body frames as one block of bytes.

    ``exchange`` and ``routing_key`` are already-encoded short strings (length byte included),
    so callers can cache them.
    """
    method = b"".join((_PUBLISH_PREFIX, exchange, routing_key, b"\x01" if mandatory else b"\x00"))
    body = message.body
    size = len(body)
    header = _CONTENT_START.pack(60, 0, size) + encode_properties(message)
    if frame_max and len(header) + FRAME_OVERHEAD > frame_max:
        raise ValueError(
            f"the message properties take {len(header)} bytes, more than fit in one frame "
            f"(the broker's frame_max is {frame_max}); make the headers smaller"
        )
    pack = FRAME_HEAD.pack
    parts = [
        pack(FRAME_METHOD, channel, len(method)),
        method,
        b"\xce",
        pack(FRAME_HEADER, channel, len(header)),
        header,
        b"\xce",
    ]
    if size:
        chunk_size = frame_max - FRAME_OVERHEAD if frame_max else size
        if size <= chunk_size:
            parts += (pack(FRAME_BODY, channel, size), body, b"\xce")
        else:
            for start in range(0, size, chunk_size):
                chunk = body[start : start + chunk_size]
                parts += (pack(FRAME_BODY, channel, len(chunk)), chunk, b"\xce")
    return b"".join(parts)


def encode_ack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    """``basic.ack`` as a whole frame."""
    return _ACK.pack(FRAME_METHOD, channel, 13, 60, 80, delivery_tag, multiple) + b"\xce"


def encode_nack(channel: int, delivery_tag: int, multiple: bool, requeue: bool) -> bytes:
    """``basic.nack`` as a whole frame."""
    bits = (1 if multiple else 0) | (2 if requeue else 0)
    return _ACK.pack(FRAME_METHOD, channel, 13, 60, 120, delivery_tag, bits) + b"\xce"


def encode_reject(channel: int, delivery_tag: int, requeue: bool) -> bytes:
    """``basic.reject`` as a whole frame."""
    return _ACK.pack(FRAME_METHOD, channel, 13, 60, 90, delivery_tag, requeue) + b"\xce"


def method_id(data: bytes, offset: int) -> int:
    """The class and method id at ``offset`` (the start of a method frame's payload)."""
    return int(_METHOD_ID.unpack_from(data, offset)[0])


def decode_method(payload: bytes) -> Method:
    """Decode a method frame's payload with pamqp.

    Raises:
        ProtocolError: an unknown method or arguments that do not parse.
    """
    index = method_id(payload, 0) if len(payload) >= 4 else -1
    cls = _commands.INDEX_MAPPING.get(index)
    if cls is None:
        raise ProtocolError(f"the broker sent an unknown AMQP method (id 0x{index:08x})")
    method = cls()
    try:
        method.unmarshal(payload[4:])
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed {method.name} frame from the broker: {exc}") from exc
    return method  # type: ignore[no-any-return]


def _str(data: bytes, pos: int) -> tuple[str, int]:
    end = pos + 1 + data[pos]
    if end > len(data):
        raise IndexError("short string runs past the end of the frame")
    return data[pos + 1 : end].decode("utf-8", "replace"), end


def decode_deliver(data: bytes, pos: int, end: int) -> tuple[str, int, bool, str, str]:
    """Decode ``basic.deliver`` whose payload starts at ``pos``: consumer tag, delivery tag,
    redelivered, exchange, routing key."""
    try:
        pos += 4
        size = data[pos]
        consumer_tag = data[pos + 1 : pos + 1 + size].decode("utf-8", "replace")
        pos += 1 + size
        delivery_tag, redelivered = _TAG_BITS.unpack_from(data, pos)
        pos += 9
        size = data[pos]
        exchange = data[pos + 1 : pos + 1 + size].decode("utf-8", "replace")
        pos += 1 + size
        size = data[pos]
        routing_key = data[pos + 1 : pos + 1 + size].decode("utf-8", "replace")
        if pos + 1 + size > end:
            raise IndexError("basic.deliver runs past the end of its frame")
    except (IndexError, struct.error) as exc:
        raise ProtocolError(f"malformed basic.deliver frame from the broker: {exc}") from exc
    return consumer_tag, delivery_tag, bool(redelivered & 1), exchange, routing_key


def decode_confirm(data: bytes, pos: int) -> tuple[int, int]:
    """Decode ``basic.ack``/``basic.nack`` from the broker: delivery tag and the bits octet."""
    try:
        tag, bits = _TAG_BITS.unpack_from(data, pos + 4)
    except struct.error as exc:
        raise ProtocolError(f"malformed publisher confirm from the broker: {exc}") from exc
    return int(tag), int(bits)


def decode_header(data: bytes, pos: int, end: int, message: IncomingMessage) -> int:
    """Decode a content header frame's payload (``data[pos:end]``) into ``message``'s
    properties; return the body size. Headers stay encoded until someone reads them."""
    try:
        _class, _weight, body_size, flags = _CONTENT_HEAD.unpack_from(data, pos)
        pos += 14
        more = flags & 1
        while more:
            # Continuation flag words name properties AMQP 0-9-1 does not have; skip them.
            more = _U16.unpack_from(data, pos)[0] & 1
            pos += 2
        if flags & 0x8000:
            message.content_type, pos = _str(data, pos)
        if flags & 0x4000:
            message.content_encoding, pos = _str(data, pos)
        if flags & 0x2000:
            size = _U32.unpack_from(data, pos)[0]
            message._raw_headers = data[pos : pos + 4 + size]
            pos += 4 + size
        if flags & 0x1000:
            message.delivery_mode = data[pos]
            pos += 1
        if flags & 0x0800:
            message.priority = data[pos]
            pos += 1
        if flags & 0x0400:
            message.correlation_id, pos = _str(data, pos)
        if flags & 0x0200:
            message.reply_to, pos = _str(data, pos)
        if flags & 0x0100:
            text, pos = _str(data, pos)
            try:
                message.expiration = int(text) / 1000
            except ValueError:
                message.expiration = None
        if flags & 0x0080:
            message.message_id, pos = _str(data, pos)
        if flags & 0x0040:
            stamp = _U64.unpack_from(data, pos)[0]
            if stamp > 0xFFFFFFFF:  # milliseconds, as some clients send
                stamp /= 1000
            message.timestamp = _from_timestamp(stamp, _UTC)
            pos += 8
        if flags & 0x0020:
            message.type, pos = _str(data, pos)
        if flags & 0x0010:
            message.user_id, pos = _str(data, pos)
        if flags & 0x0008:
            message.app_id, pos = _str(data, pos)
        if flags & 0x0004:
            _cluster, pos = _str(data, pos)
        if pos > end:
            raise IndexError("content header runs past the end of its frame")
    except (IndexError, struct.error, OverflowError, ValueError, OSError) as exc:
        raise ProtocolError(f"malformed content header from the broker: {exc}") from exc
    return int(body_size)
