"""What Master and RPC share: the serializer hooks, the attribute proxy, handler invocation.

Serialization follows the seed's extension API: subclass and set ``CONTENT_TYPE`` and redefine
``serialize(data) -> bytes`` and ``deserialize(data: bytes)``. JSON is the default; msgpack ships
as ``MsgpackMixin`` (the ``msgpack`` extra); pickle only as ``PickleMixin``, which warns.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from hutch.exceptions import DecodeError

# One encoder for every message: ``json.dumps(..., ensure_ascii=False)`` builds a new one per call.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)
_JSON_DECODER = json.JSONDecoder()


class Serializing:
    """The serializer hooks: JSON unless a subclass says otherwise."""

    CONTENT_TYPE = "application/json"

    def serialize(self, data: Any) -> bytes:
        """Turn a task's kwargs, or a call's result, into bytes."""
        return _JSON_ENCODER.encode(data).encode()

    def deserialize(self, data: bytes) -> Any:
        """Turn bytes from the wire back into Python data."""
        # json.loads(bytes) spends most of its time (per message, on the hot path) finding the
        # encoding and matching whitespace. A UTF-8 body that is one JSON value and nothing
        # else, which is what every client here sends, goes straight to the C scanner; anything
        # else goes to json.loads, which gives the same value, or the same error.
        if data.__class__ is not bytes:  # str, or another bytes-like object: json.loads' rules
            return json.loads(data)
        try:
            text = data.decode()
            value, end = _JSON_DECODER.raw_decode(text)
        except ValueError:  # not UTF-8, leading whitespace, or not JSON
            return json.loads(data)
        if end != len(text):  # trailing whitespace, or more after the value
            return _JSON_DECODER.decode(text)  # what json.loads does with the decoded text
        return value

    def _decode(self, body: bytes, content_type: str | None) -> Any:
        """Deserialize a received body, checking its content type first.

        Raises:
            DecodeError: the content type is not ``CONTENT_TYPE`` or the body does not parse.
        """
        if content_type is not None and content_type != self.CONTENT_TYPE:
            raise DecodeError(
                f"content type {content_type!r} is not {self.CONTENT_TYPE!r}: the sender uses "
                "another serializer; use a subclass with the same CONTENT_TYPE on both sides"
            )
        try:
            return self.deserialize(body)
        except Exception as exc:
            raise DecodeError(
                f"the body could not be deserialized as {self.CONTENT_TYPE}: {exc}"
            ) from exc


class MsgpackMixin(Serializing):
    """msgpack serialization (``pip install hutch[msgpack]``)."""

    CONTENT_TYPE = "application/msgpack"

    def serialize(self, data: Any) -> bytes:
        import msgpack  # type: ignore[import-untyped,unused-ignore]

        return bytes(msgpack.dumps(data))

    def deserialize(self, data: bytes) -> Any:
        import msgpack

        return msgpack.loads(data)


class PickleMixin(Serializing):
    """pickle serialization, as aio-pika's default: ONLY for queues you fully trust.

    Unpickling runs code chosen by whoever wrote the message; anyone who can publish to the
    queue can take over the process. Creating an instance warns.
    """

    CONTENT_TYPE = "application/python-pickle"

    def _warn_pickle(self) -> None:
        warnings.warn(
            f"{type(self).__name__} unpickles message bodies: anyone who can publish to its "
            "queues can run code in this process. Use it only with trusted publishers.",
            UnsafeSerializerWarning,
            stacklevel=3,
        )

    def serialize(self, data: Any) -> bytes:
        import pickle

        return pickle.dumps(data)

    def deserialize(self, data: bytes) -> Any:
        import pickle

        return pickle.loads(data)  # the user opted in, and was warned


class UnsafeSerializerWarning(UserWarning):
    """A pattern was created with a serializer that runs code from the message (pickle)."""


class Proxy:
    """``proxy.a.b(**kwargs)`` calls ``target("a.b", kwargs)``."""

    __slots__ = ("_name", "_target")

    def __init__(
        self, target: Callable[[str, dict[str, Any]], Awaitable[Any]], name: str = ""
    ) -> None:
        self._target = target
        self._name = name

    def __getattr__(self, item: str) -> Proxy:
        if item.startswith("__"):
            raise AttributeError(item)
        return Proxy(self._target, f"{self._name}.{item}" if self._name else item)

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        if not self._name:
            raise TypeError("call a name on the proxy, e.g. proxy.my_task(x=1)")
        if args:
            raise TypeError(
                f"{self._name}() takes keyword arguments only (they travel as a JSON object); "
                f"got {len(args)} positional"
            )
        return self._target(self._name, kwargs)

    def __repr__(self) -> str:
        return f"<Proxy {self._name or '(root)'}>"


def is_async(func: Callable[..., Any]) -> bool:
    """Whether calling ``func`` gives an awaitable (``async def``, or a callable object whose
    ``__call__`` is one, or a partial of one)."""
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


async def call_handler(
    func: Callable[..., Any], kwargs: dict[str, Any], executor: Executor | None = None
) -> Any:
    """Run a handler with ``kwargs``: awaited if async, else in ``executor`` (a thread pool by
    default) so the event loop, and with it heartbeats, keeps going."""
    if is_async(func):
        return await func(**kwargs)
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(executor, functools.partial(func, **kwargs))
    if inspect.isawaitable(result):
        return await result
    return result
