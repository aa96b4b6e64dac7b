"""The hand-written hot-path codec against pamqp, byte for byte, over generated inputs.

``hutch.amqp.frames`` packs ``basic.publish`` (with its content header and body frames) and
``basic.ack``/``nack``/``reject`` by hand and parses ``basic.deliver``, publisher confirms and
content headers by hand. pamqp is the reference: what it marshals, hutch must produce; what it
marshals, hutch must read back as pamqp does. The link's frame splitter is checked here too, since
it is the other half of the read path.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from hutch.amqp import frames
from hutch.amqp.link import BufferedLink, Link
from hutch.exceptions import ProtocolError
from hutch.message import IncomingMessage, Message, make_incoming

settings.register_profile(
    "frames", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FRAMES = settings.get_profile("frames")

# -- strategies ---------------------------------------------------------------------------------

_text = st.text(max_size=40)  # at most 160 bytes of UTF-8: always a valid short string
_opt_text = st.none() | st.just("") | _text
_octet = st.none() | st.integers(0, 255)
_seconds = st.integers(0, 4_102_444_800)  # 1970 .. 2100, whole seconds as AMQP carries them
_naive = _seconds.map(
    lambda s: datetime.datetime.fromtimestamp(s, datetime.UTC).replace(tzinfo=None)
)
_aware = st.builds(
    lambda s, minutes: datetime.datetime.fromtimestamp(
        s, datetime.timezone(datetime.timedelta(minutes=minutes))
    ),
    _seconds,
    st.integers(-12 * 60, 14 * 60),
)
_field_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(width=32, allow_nan=False)
    | st.text(max_size=30)
    | _naive
    | st.binary(max_size=20).map(bytearray)
    | st.decimals(places=2, min_value=-(10**6), max_value=10**6, allow_nan=False)
)
_field_value = st.recursive(
    _field_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_PATTERN = bytes(range(256)) * 50
# Small bodies of any bytes, and bodies long enough to span several frames of the smallest
# frame_max AMQP allows (4096).
_bodies = st.binary(max_size=300) | st.integers(0, len(_PATTERN)).map(lambda n: _PATTERN[:n])
_headers = st.none() | st.dictionaries(_text, _field_value, max_size=6)
# pamqp packs delivery tags as signed 64-bit; RabbitMQ's never come near 2**63.
_tags = st.integers(0, 2**63 - 1)
_exchange_name = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:", max_size=127
)


@st.composite
def messages(draw: st.DrawFn) -> tuple[Message, spec.Basic.Properties]:
    """A hutch ``Message`` and the pamqp ``Basic.Properties`` that should encode the same."""
    body = draw(_bodies)
    kwargs: dict[str, Any] = {
        "content_type": draw(_opt_text),
        "content_encoding": draw(_opt_text),
        "headers": draw(_headers),
        "delivery_mode": draw(st.none() | st.sampled_from([1, 2])),
        "priority": draw(_octet),
        "correlation_id": draw(_opt_text),
        "reply_to": draw(_opt_text),
        "message_id": draw(_opt_text),
        "type": draw(_opt_text),
        "user_id": draw(_opt_text),
        "app_id": draw(_opt_text),
    }
    expiration = draw(st.none() | st.integers(0, 10**9) | st.floats(0, 10**6))
    timestamp = draw(st.none() | _naive | _aware | _seconds | _seconds.map(float))
    message = Message(body, expiration=expiration, timestamp=timestamp, **kwargs)
    if isinstance(timestamp, (int, float)):
        timestamp = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    kwargs["message_type"] = kwargs.pop("type")
    properties = spec.Basic.Properties(
        expiration=None if expiration is None else frames.expiration_text(expiration),
        timestamp=timestamp,
        **kwargs,
    )
    return message, properties


def pamqp_publish(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    body: bytes,
    properties: spec.Basic.Properties,
    frame_max: int,
) -> bytes:
    """What a pamqp-based client sends for one publish, body split to fit ``frame_max``."""
    out = [
        pamqp_frame.marshal(
            spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
            channel,
        ),
        pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(body), properties), channel),
    ]
    step = frame_max - frames.FRAME_OVERHEAD if frame_max else max(len(body), 1)
    for start in range(0, len(body), step):
        out.append(pamqp_frame.marshal(pamqp_body.ContentBody(body[start : start + step]), channel))
    return b"".join(out)


def payload(frame: bytes) -> bytes:
    """The payload of one whole marshalled frame."""
    assert frame[-1] == frames.FRAME_END
    return frame[7:-1]


# -- encoding -----------------------------------------------------------------------------------


@FRAMES
@given(
    st.integers(1, 65535),
    _exchange_name,
    st.text(max_size=60),
    st.booleans(),
    messages(),
    st.just(0) | st.integers(4096, 5000) | st.just(131072),
)
def test_publish_frames_equal_pamqp(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    pair: tuple[Message, spec.Basic.Properties],
    frame_max: int,
) -> None:
    """``encode_publish`` gives the same bytes as pamqp for the method, every property (None
    and "" left out), and a body split at ``frame_max``."""
    message, properties = pair
    got = frames.encode_publish(
        channel,
        frames.shortstr(exchange),
        frames.shortstr(routing_key),
        mandatory,
        message,
        frame_max,
    )
    want = pamqp_publish(
        channel, exchange, routing_key, mandatory, message.body, properties, frame_max
    )
    assert got == want


@FRAMES
@given(messages())
def test_encoded_properties_equal_pamqp(pair: tuple[Message, spec.Basic.Properties]) -> None:
    """The property flags and values of a content header equal pamqp's ``Properties.marshal``."""
    message, properties = pair
    assert frames.encode_properties(message) == properties.marshal()


def test_republishing_a_received_message_sends_its_headers_unchanged() -> None:
    """A delivered message published again carries its headers table as received, undecoded."""
    table = {"b": 1, "a": [True, "x"], "n": None}
    header = pamqp_frame.marshal(
        pamqp_header.ContentHeader(0, 0, spec.Basic.Properties(headers=table)), 1
    )
    message = make_incoming(None, 0, 1, False, "", "", "", True)  # type: ignore[arg-type]
    frames.decode_header(header, 7, len(header) - 1, message)
    assert message._raw_headers is not None
    assert frames.encode_properties(message) == spec.Basic.Properties(headers=table).marshal()


@given(st.integers(1, 65535), _tags, st.booleans(), st.booleans())
def test_settle_frames_equal_pamqp(channel: int, tag: int, multiple: bool, requeue: bool) -> None:
    """``basic.ack``, ``basic.nack`` and ``basic.reject`` equal pamqp's frames."""
    assert frames.encode_ack(channel, tag, multiple) == pamqp_frame.marshal(
        spec.Basic.Ack(delivery_tag=tag, multiple=multiple), channel
    )
    assert frames.encode_nack(channel, tag, multiple, requeue) == pamqp_frame.marshal(
        spec.Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=requeue), channel
    )
    assert frames.encode_reject(channel, tag, requeue) == pamqp_frame.marshal(
        spec.Basic.Reject(delivery_tag=tag, requeue=requeue), channel
    )


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("content_type", "x" * 256, "content_type is 256 bytes long"),
        ("delivery_mode", 3, "delivery_mode must be 1"),
        ("priority", 256, "priority must be an int between 0 and 255"),
        ("priority", "high", "priority must be an int"),
        ("correlation_id", 42, "correlation_id must be a str"),
        ("expiration", -1, "expiration must be 0 or more"),
        ("timestamp", -5, "timestamp must be"),
        ("headers", {"k": object()}, "message headers cannot be encoded"),
    ],
)
def test_bad_properties_raise_a_clear_error(field: str, value: Any, complaint: str) -> None:
    """A property AMQP cannot carry raises ValueError/TypeError naming the property."""
    message = Message(b"x", **{field: value})
    with pytest.raises((ValueError, TypeError), match=complaint):
        frames.encode_publish(1, b"\x00", b"\x00", False, message, 131072)


def test_properties_too_large_for_a_frame_raise_before_sending() -> None:
    """A content header larger than ``frame_max`` is refused with ValueError, not sent for the
    broker to close the connection over."""
    message = Message(b"x", headers={"big": "y" * 5000})
    with pytest.raises(ValueError, match="frame_max"):
        frames.encode_publish(1, b"\x00", b"\x00", False, message, 4096)


def test_routing_key_longer_than_255_bytes_is_refused() -> None:
    """A routing key over 255 bytes of UTF-8 raises ValueError naming it."""
    with pytest.raises(ValueError, match="routing key is 256 bytes"):
        frames.shortstr("k" * 256, "routing key")


# -- decoding -----------------------------------------------------------------------------------


@FRAMES
@given(
    _text,
    _tags,
    st.booleans(),
    _exchange_name,
    st.text(max_size=60),
    st.binary(max_size=10),
)
def test_deliver_decodes_as_pamqp_marshals_it(
    consumer_tag: str,
    tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    before: bytes,
) -> None:
    """``decode_deliver`` reads the consumer tag, delivery tag, redelivered flag, exchange and
    routing key that pamqp put in a ``basic.deliver`` frame, wherever the frame sits."""
    method = spec.Basic.Deliver(
        consumer_tag=consumer_tag,
        delivery_tag=tag,
        redelivered=redelivered,
        exchange=exchange,
        routing_key=routing_key,
    )
    data = before + pamqp_frame.marshal(method, 5) + b"trailing"
    start = len(before) + 7
    end = start + len(payload(pamqp_frame.marshal(method, 5)))
    assert frames.method_id(data, start) == frames.BASIC_DELIVER
    got = frames.decode_deliver(data, start, end)
    assert got == (consumer_tag, tag, redelivered, exchange, routing_key)


@given(_tags, st.booleans(), st.booleans())
def test_confirms_decode_as_pamqp_marshals_them(tag: int, multiple: bool, requeue: bool) -> None:
    """``decode_confirm`` reads the tag and the multiple bit of pamqp's ``basic.ack`` and
    ``basic.nack``."""
    ack = pamqp_frame.marshal(spec.Basic.Ack(delivery_tag=tag, multiple=multiple), 1)
    assert frames.method_id(ack, 7) == frames.BASIC_ACK
    assert frames.decode_confirm(ack, 7) == (tag, int(multiple))
    nack = pamqp_frame.marshal(
        spec.Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=requeue), 1
    )
    assert frames.method_id(nack, 7) == frames.BASIC_NACK
    assert frames.decode_confirm(nack, 7)[0] == tag
    assert frames.decode_confirm(nack, 7)[1] & 1 == int(multiple)


def _received(header_frame: bytes) -> tuple[IncomingMessage, int]:
    message = make_incoming(None, 0, 1, False, "", "", "", True)  # type: ignore[arg-type]
    size = frames.decode_header(header_frame, 7, len(header_frame) - 1, message)
    return message, size


@FRAMES
@given(messages())
@example(
    (
        Message(timestamp=datetime.datetime(2200, 1, 1)),  # seconds beyond 2**32
        spec.Basic.Properties(timestamp=datetime.datetime(2200, 1, 1)),
    )
)
def test_content_header_decodes_as_pamqp_reads_it(
    pair: tuple[Message, spec.Basic.Properties],
) -> None:
    """``decode_header`` gives the body size and every property pamqp reads from the same
    content header; expiration becomes seconds, headers decode on first access."""
    sent, properties = pair
    frame = pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(sent.body), properties), 3)
    reference = pamqp_header.ContentHeader()
    reference.unmarshal(payload(frame))
    want = reference.properties
    got, size = _received(frame)
    assert size == len(sent.body)
    assert got.content_type == want.content_type
    assert got.content_encoding == want.content_encoding
    assert got.headers == want.headers
    assert got.delivery_mode == want.delivery_mode
    assert got.priority == want.priority
    assert got.correlation_id == want.correlation_id
    assert got.reply_to == want.reply_to
    assert got.expiration == (None if want.expiration is None else int(want.expiration) / 1000)
    assert got.message_id == want.message_id
    assert got.timestamp == want.timestamp
    assert got.type == want.message_type
    assert got.user_id == want.user_id
    assert got.app_id == want.app_id


def test_millisecond_timestamps_are_read_as_pamqp_reads_them() -> None:
    """A timestamp in milliseconds (as some clients send) decodes to the same instant as
    pamqp's decoder gives."""
    millis = 1_700_000_000_123
    frame = frames.FRAME_HEAD.pack(2, 1, 22) + (
        bytes.fromhex("003c0000") + (0).to_bytes(8, "big") + b"\x00\x40"
    )
    frame += millis.to_bytes(8, "big") + b"\xce"
    reference = pamqp_header.ContentHeader()
    reference.unmarshal(payload(frame))
    got, _size = _received(frame)
    assert got.timestamp == reference.properties.timestamp
    assert got.timestamp is not None
    assert got.timestamp.year == 2023


def test_cluster_id_and_flag_continuations_are_skipped() -> None:
    """A header carrying the deprecated cluster-id and a continuation flag word still yields the
    properties that follow the flags."""
    flags = 0x8000 | 0x0004 | 0x0001
    body = b"\x00\x3c\x00\x00" + (7).to_bytes(8, "big") + flags.to_bytes(2, "big") + b"\x00\x00"
    body += b"\x04text" + b"\x03cid"
    frame = frames.FRAME_HEAD.pack(2, 1, len(body)) + body + b"\xce"
    got, size = _received(frame)
    assert size == 7
    assert got.content_type == "text"


@FRAMES
@given(messages(), st.data())
def test_truncated_content_header_raises_protocol_error(
    pair: tuple[Message, spec.Basic.Properties], data: st.DataObject
) -> None:
    """A content header cut short anywhere raises ProtocolError, never another exception."""
    _sent, properties = pair
    frame = pamqp_frame.marshal(pamqp_header.ContentHeader(0, 1, properties), 3)
    end = len(frame) - 1
    cut = data.draw(st.integers(7, end - 1))
    message = make_incoming(None, 0, 1, False, "", "", "", True)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="malformed content header"):
        frames.decode_header(frame[:cut], 7, cut, message)


@given(st.binary(min_size=4, max_size=40))
def test_garbage_deliver_raises_protocol_error_only(garbage: bytes) -> None:
    """Arbitrary bytes parsed as ``basic.deliver`` decode or raise ProtocolError, nothing else."""
    complaint = ""
    try:
        frames.decode_deliver(garbage, 0, len(garbage))
    except ProtocolError as exc:
        complaint = str(exc)
    assert complaint in ("",) or complaint.startswith("malformed basic.deliver frame")


# -- the link's frame splitter ------------------------------------------------------------------


class _Recorder:
    """Stands in for a channel and records what the link hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def _on_deliver(self, *args: Any) -> None:
        self.calls.append(("deliver", *args))

    def _on_delivery(
        self, fields: tuple[Any, ...], data: bytes, start: int, end: int, body: bytes
    ) -> None:
        self._on_deliver(*fields)
        self._on_header(data, start, end)
        self._on_body(body)

    def _on_header(self, data: bytes, start: int, end: int) -> None:
        self.calls.append(("header", bytes(data[start:end])))

    def _on_body(self, chunk: bytes) -> None:
        self.calls.append(("body", bytes(chunk)))

    def _on_confirm(self, tag: int, bits: int, nack: bool) -> None:
        self.calls.append(("confirm", tag, bits, nack))

    def _on_method(self, method: Any) -> None:
        self.calls.append(("method", method.name))


def _stream() -> bytes:
    deliver = spec.Basic.Deliver(
        consumer_tag="ctag", delivery_tag=9, redelivered=True, exchange="ex", routing_key="rk"
    )
    properties = spec.Basic.Properties(content_type="text/plain", headers={"a": 1})
    return b"".join(
        [
            pamqp_frame.marshal(deliver, 1),
            pamqp_frame.marshal(pamqp_header.ContentHeader(0, 5, properties), 1),
            pamqp_frame.marshal(pamqp_body.ContentBody(b"hel"), 1),
            pamqp_frame.marshal(pamqp_body.ContentBody(b"lo"), 1),
            pamqp_frame.marshal(deliver, 1),
            pamqp_frame.marshal(pamqp_header.ContentHeader(0, 5, properties), 1),
            pamqp_frame.marshal(pamqp_body.ContentBody(b"whole"), 1),
            pamqp_frame.marshal(deliver, 1),
            pamqp_frame.marshal(pamqp_header.ContentHeader(0, 0, properties), 1),
            frames.HEARTBEAT,
            pamqp_frame.marshal(spec.Basic.Ack(delivery_tag=4, multiple=True), 1),
            pamqp_frame.marshal(spec.Basic.QosOk(), 1),
            pamqp_frame.marshal(spec.Basic.Ack(delivery_tag=5), 2),  # no such channel
        ]
    )


async def test_frames_split_across_reads_reach_the_channel_whole() -> None:
    """However the byte stream is cut into reads, the channel gets the same frames in order."""
    stream = _stream()
    whole = _Recorder()
    link = Link({1: whole}, lambda *_: None, lambda *_: None, 131072)  # type: ignore[dict-item]
    link.data_received(stream)
    assert [call[0] for call in whole.calls] == [
        "deliver",
        "header",
        "body",
        "body",
        "deliver",
        "header",
        "body",
        "deliver",
        "header",
        "confirm",
        "method",
    ]
    assert whole.calls[0] == ("deliver", "ctag", 9, True, "ex", "rk")
    assert whole.calls[6] == ("body", b"whole")
    assert whole.calls[9] == ("confirm", 4, 1, False)
    for cut in range(1, len(stream)):
        for second in (cut, min(cut + 3, len(stream)), len(stream)):
            recorder = _Recorder()
            link = Link({1: recorder}, lambda *_: None, lambda *_: None, 131072)  # type: ignore[dict-item]
            link.data_received(stream[:cut])
            link.data_received(stream[cut:second])
            link.data_received(stream[second:])
            assert recorder.calls == whole.calls, (cut, second)


async def test_reads_into_the_links_own_buffer_reach_the_channel_whole() -> None:
    """Bytes the transport reads into ``get_buffer()`` (``BufferedLink``, asyncio's
    BufferedProtocol path) give the channel the same frames as ``data_received``."""
    stream = _stream()
    whole = _Recorder()
    Link({1: whole}, lambda *_: None, lambda *_: None, 131072).data_received(stream)  # type: ignore[dict-item]
    recorder = _Recorder()
    link = BufferedLink({1: recorder}, lambda *_: None, lambda *_: None, 131072)  # type: ignore[dict-item]
    for start in range(0, len(stream), 50):
        piece = stream[start : start + 50]
        buffer = link.get_buffer(-1)
        buffer[: len(piece)] = piece
        link.buffer_updated(len(piece))
    assert recorder.calls == whole.calls


async def test_corrupt_frame_end_fails_the_link_with_protocol_error() -> None:
    """A frame not ending in 0xCE fails the link with ProtocolError instead of misreading."""
    stream = bytearray(_stream())
    first_end = 7 + int.from_bytes(stream[3:7], "big")
    stream[first_end] = 0x00
    link = Link({1: _Recorder()}, lambda *_: None, lambda *_: None, 131072)  # type: ignore[dict-item]
    link.data_received(bytes(stream))
    assert isinstance(link.error, ProtocolError)
    assert "0xCE" in str(link.error)


async def test_frame_larger_than_frame_max_fails_the_link() -> None:
    """A frame announcing more than the negotiated ``frame_max`` fails the link."""
    link = Link({1: _Recorder()}, lambda *_: None, lambda *_: None, 4096)  # type: ignore[dict-item]
    link.data_received(frames.FRAME_HEAD.pack(3, 1, 5000) + b"x" * 100)
    assert isinstance(link.error, ProtocolError)
    assert "4096" in str(link.error)
