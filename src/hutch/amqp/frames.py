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
_HEADER_HEAD = struct.Struct(">BHIHHQ")  # frame head + class, weight, body size
_END_BODY_HEAD = struct.Struct(">BBHI")  # end of the header frame + body frame head
_ACK = struct.Struct(">BHIHHQB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TAG_BITS = struct.Struct(">QB")

_OCTETS = [bytes((i,)) for i in range(256)]
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


def _text_bytes(value: object, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"{what} must be a str, not {value.__class__.__name__}")


def _too_long(data: bytes, what: str) -> None:
    raise ValueError(f"{what} is {len(data)} bytes long; AMQP allows at most 255")


def encode_properties(message: Message) -> bytes:
    """Encode the property flags and values of a content header (pamqp's rules: ``None`` and
    ``""`` are left out).

    Straight-line code, one block per property: this runs for every published message.
    """
    flags = 0
    parts: list[bytes] = []
    append = parts.append
    value: Any
    value = message.content_type
    if value:
        data = value.encode() if value.__class__ is str else _text_bytes(value, "content_type")
        if len(data) > 255:
            _too_long(data, "content_type")
        flags |= 0x8000
        append(_OCTETS[len(data)])
        append(data)
    value = message.content_encoding
    if value:
        data = value.encode() if value.__class__ is str else _text_bytes(value, "content_encoding")
        if len(data) > 255:
            _too_long(data, "content_encoding")
        flags |= 0x4000
        append(_OCTETS[len(data)])
        append(data)
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
        append(_OCTETS[value])
    value = message.priority
    if value is not None:
        if not isinstance(value, int) or not 0 <= value <= 255:
            raise ValueError(f"priority must be an int between 0 and 255, not {value!r}")
        flags |= 0x0800
        append(_OCTETS[value])
    value = message.correlation_id
    if value:
        data = value.encode() if value.__class__ is str else _text_bytes(value, "correlation_id")
        if len(data) > 255:
            _too_long(data, "correlation_id")
        flags |= 0x0400
        append(_OCTETS[len(data)])
        append(data)
    value = message.reply_to
    if value:
        data = value.encode() if value.__class__ is str else _text_bytes(value, "reply_to")
        if len(data) > 255:
            _too_long(data, "reply_to")
        flags |= 0x0200
        append(_OCTETS[len(data)])
        append(data)
    value = message.expiration
    if value is not None:
        flags |= 0x0100
        append(shortstr(expiration_text(value), "expiration"))
    value = message.message_id
    if value:
        data = value.encode() if value.__class__ is str else _text_bytes(value, "message_id")
        if len(data) > 255:
            _too_long(data, "message_id")
        flags |= 0x0080
        append(_OCTETS[len(data)])
        append(data)
    value = message.timestamp
    if value is not None:
        flags |= 0x0040
        append(_timestamp_seconds(value))
    value = message.type
    if value:
        data = value.encode() if value.__class__ is str else _text_bytes(value, "type")
        if len(data) > 255:
            _too_long(data, "type")
        flags |= 0x0020
        append(_OCTETS[len(data)])
        append(data)
    value = message.user_id
    if value:
        data = value.encode() if value.__class__ is str else _text_bytes(value, "user_id")
        if len(data) > 255:
            _too_long(data, "user_id")
        flags |= 0x0010
        append(_OCTETS[len(data)])
        append(data)
    value = message.app_id
    if value:
        data = value.encode() if value.__class__ is str else _text_bytes(value, "app_id")
        if len(data) > 255:
            _too_long(data, "app_id")
        flags |= 0x0008
        append(_OCTETS[len(data)])
        append(data)
    return _U16.pack(flags) + b"".join(parts)


def encode_publish_method(
    channel: int, exchange: bytes, routing_key: bytes, mandatory: bool
) -> bytes:
    """The whole ``basic.publish`` method frame; ``exchange`` and ``routing_key`` are encoded
    short strings (length byte included). Channels cache it per destination."""
    payload = b"".join((_PUBLISH_PREFIX, exchange, routing_key, b"\x01" if mandatory else b"\x00"))
    return FRAME_HEAD.pack(FRAME_METHOD, channel, len(payload)) + payload + b"\xce"


def encode_content(method: bytes, channel: int, message: Message, frame_max: int) -> bytes:
    """``method`` (an encoded ``basic.publish`` frame) followed by ``message``'s content header
    and body frames (the body split to fit ``frame_max``), as one block of bytes.

    Raises:
        ValueError: a property AMQP cannot carry, or properties too large for one frame.
        TypeError: headers that cannot be encoded as an AMQP table.
    """
    body = message.body
    size = len(body)
    properties = encode_properties(message)
    header_size = 12 + len(properties)
    if frame_max and header_size + FRAME_OVERHEAD > frame_max:
        raise ValueError(
            f"the message properties take {header_size} bytes, more than fit in one frame "
            f"(the broker's frame_max is {frame_max}); make the headers smaller"
        )
    head = _HEADER_HEAD.pack(FRAME_HEADER, channel, header_size, 60, 0, size)
    if not size:
        return b"".join((method, head, properties, b"\xce"))
    chunk_size = frame_max - FRAME_OVERHEAD if frame_max else size
    if size <= chunk_size:
        return b"".join(
            (
                method,
                head,
                properties,
                _END_BODY_HEAD.pack(FRAME_END, FRAME_BODY, channel, size),
                body,
                b"\xce",
            )
        )
    parts = [method, head, properties, b"\xce"]
    pack = FRAME_HEAD.pack
    for start in range(0, size, chunk_size):
        chunk = body[start : start + chunk_size]
        parts += (pack(FRAME_BODY, channel, len(chunk)), chunk, b"\xce")
    return b"".join(parts)


def encode_publish(
    channel: int,
    exchange: bytes,
    routing_key: bytes,
    mandatory: bool,
    message: Message,
    frame_max: int,
) -> bytes:
    """Encode ``basic.publish``, its content header and body frames as one block of bytes.

    ``exchange`` and ``routing_key`` are already-encoded short strings (length byte included).
    """
    method = encode_publish_method(channel, exchange, routing_key, mandatory)
    return encode_content(method, channel, message, frame_max)


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
    if len(payload) < 4:
        raise ProtocolError(
            f"the broker sent a method frame of {len(payload)} bytes, too short for a method id"
        )
    index = method_id(payload, 0)
    cls = _commands.INDEX_MAPPING.get(index)
    if cls is None:
        raise ProtocolError(f"the broker sent an unknown AMQP method (id 0x{index:08x})")
    method = cls()
    try:
        method.unmarshal(payload[4:])
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed {method.name} frame from the broker: {exc}") from exc
    return method  # type: ignore[no-any-return]


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


def decode_deliver(data: bytes, pos: int, end: int) -> tuple[str, int, bool, str, str]:
    """Decode ``basic.deliver`` whose payload starts at ``pos``: consumer tag, delivery tag,
    redelivered, exchange, routing key."""
    try:
        pos += 4
        size = data[pos]
        consumer_tag = _text(data[pos + 1 : pos + 1 + size])
        pos += 1 + size
        delivery_tag, redelivered = _TAG_BITS.unpack_from(data, pos)
        pos += 9
        size = data[pos]
        exchange = _text(data[pos + 1 : pos + 1 + size]) if size else ""
        pos += 1 + size
        size = data[pos]
        routing_key = _text(data[pos + 1 : pos + 1 + size])
        if pos + 1 + size > end:
            raise IndexError("basic.deliver runs past the end of its frame")
    except (IndexError, struct.error) as exc:
        raise ProtocolError(f"malformed basic.deliver frame from the broker: {exc}") from exc
    return consumer_tag, delivery_tag, redelivered & 1 == 1, exchange, routing_key


def decode_confirm(data: bytes, pos: int) -> tuple[int, int]:
    """Decode ``basic.ack``/``basic.nack`` from the broker: delivery tag and the bits octet."""
    try:
        tag, bits = _TAG_BITS.unpack_from(data, pos + 4)
    except struct.error as exc:
        raise ProtocolError(f"malformed publisher confirm from the broker: {exc}") from exc
    return int(tag), int(bits)


def decode_header(data: bytes, pos: int, end: int, message: IncomingMessage) -> int:
    """Decode a content header frame's payload (``data[pos:end]``) into ``message``'s
    properties; return the body size. Headers stay encoded until someone reads them.

    Short strings are sliced inline (no helper call per property): this runs per delivery.
    A string that runs past the frame is caught by the final bounds check.
    """
    try:
        _class, _weight, body_size, flags = _CONTENT_HEAD.unpack_from(data, pos)
        pos += 14
        if not flags:  # no properties: the usual case for plain messages
            if pos > end:
                raise IndexError("content header runs past the end of its frame")
            return int(body_size)
        more = flags & 1
        while more:
            # Continuation flag words name properties AMQP 0-9-1 does not have; skip them.
            more = _U16.unpack_from(data, pos)[0] & 1
            pos += 2
        if flags & 0x8000:
            size = data[pos]
            pos += 1 + size
            message.content_type = data[pos - size : pos].decode("utf-8", "replace")
        if flags & 0x4000:
            size = data[pos]
            pos += 1 + size
            message.content_encoding = data[pos - size : pos].decode("utf-8", "replace")
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
            size = data[pos]
            pos += 1 + size
            message.correlation_id = data[pos - size : pos].decode("utf-8", "replace")
        if flags & 0x0200:
            size = data[pos]
            pos += 1 + size
            message.reply_to = data[pos - size : pos].decode("utf-8", "replace")
        if flags & 0x0100:
            size = data[pos]
            pos += 1 + size
            text = data[pos - size : pos].decode("utf-8", "replace")
            try:
                message.expiration = int(text) / 1000
            except ValueError:
                message.expiration = None
        if flags & 0x0080:
            size = data[pos]
            pos += 1 + size
            message.message_id = data[pos - size : pos].decode("utf-8", "replace")
        if flags & 0x0040:
            stamp = _U64.unpack_from(data, pos)[0]
            if stamp > 0xFFFFFFFF:  # milliseconds, as some clients send
                stamp /= 1000
            message.timestamp = _from_timestamp(stamp, _UTC)
            pos += 8
        if flags & 0x0020:
            size = data[pos]
            pos += 1 + size
            message.type = data[pos - size : pos].decode("utf-8", "replace")
        if flags & 0x0010:
            size = data[pos]
            pos += 1 + size
            message.user_id = data[pos - size : pos].decode("utf-8", "replace")
        if flags & 0x0008:
            size = data[pos]
            pos += 1 + size
            message.app_id = data[pos - size : pos].decode("utf-8", "replace")
        if flags & 0x0004:
            pos += 1 + data[pos]
        if pos > end:
            raise IndexError("content header runs past the end of its frame")
    except (IndexError, struct.error, OverflowError, ValueError, OSError) as exc:
        raise ProtocolError(f"malformed content header from the broker: {exc}") from exc
    return int(body_size)
