"""The default JSON serializer: its fast path gives what ``json.loads`` / ``json.dumps`` give.

``Serializing.deserialize`` parses a UTF-8 body that is exactly one JSON value with the C scanner
directly and hands everything else to ``json.loads``; these properties pin down that, for any
input, the value or the error is the one ``json.loads`` gives.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hutch.patterns.base import Serializing

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
_SERIALIZER = Serializing()


def _outcome(parse: Any, data: Any) -> tuple[str, Any]:
    try:
        return "value", parse(data)
    except (ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)


@given(
    _JSON,
    st.sampled_from(["", " ", "\n", "\t "]),
    st.sampled_from(["", " ", "\n", " x", "{}"]),
    st.sampled_from(["utf-8", "utf-16", "utf-32"]),
    st.sampled_from([None, 2]),
)
def test_any_json_text_decodes_as_json_loads_decodes_it(
    value: Any, before: str, after: str, encoding: str, indent: int | None
) -> None:
    """Whatever the whitespace around the value, trailing data, encoding or layout, the result
    (or the error, with its message) is ``json.loads``'s."""
    data = (before + json.dumps(value, indent=indent) + after).encode(encoding)
    assert _outcome(_SERIALIZER.deserialize, data) == _outcome(json.loads, data)


@given(st.binary(max_size=40))
def test_any_bytes_decode_as_json_loads_decodes_them(data: bytes) -> None:
    """Arbitrary bytes give the same value or the same error as ``json.loads``."""
    assert _outcome(_SERIALIZER.deserialize, data) == _outcome(json.loads, data)


@given(_JSON)
def test_serialize_writes_what_json_dumps_writes(value: Any) -> None:
    """The default serializer writes UTF-8 JSON exactly as ``json.dumps(ensure_ascii=False)``."""
    assert _SERIALIZER.serialize(value) == json.dumps(value, ensure_ascii=False).encode()


def test_a_value_that_json_cannot_write_raises_as_json_dumps_does() -> None:
    """An object JSON cannot encode raises ``TypeError``, naming its type."""
    with pytest.raises(TypeError, match="set"):
        _SERIALIZER.serialize({"a": {1, 2}})


@given(_JSON)
def test_text_and_other_bytes_like_bodies_decode_as_json_loads_decodes_them(value: Any) -> None:
    """A ``str``, a ``bytearray`` or a ``memoryview`` (as a subclass may pass on) gives what
    ``json.loads`` gives for it, value or error."""
    text = json.dumps(value)
    for data in (text, bytearray(text.encode()), memoryview(text.encode())):
        assert _outcome(_SERIALIZER.deserialize, data) == _outcome(json.loads, data)  # type: ignore[arg-type]
