"""RPC without a broker: how error replies become exceptions, the error body, the options."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

import hutch
from hutch.patterns import RPC, JsonRPC, MsgpackRPC, PickleRPC

NOT_A_CHANNEL: Any = object()


class Overdrawn(Exception):
    pass


def error_reply(type_: str, args: list[Any], traceback: str = "") -> dict[str, Any]:
    return {
        "error": {"type": type_, "message": f"{type_}(...)", "args": args, "traceback": traceback}
    }


def test_builtin_exception_names_become_the_builtin_type() -> None:
    """A reply naming a builtin Exception type is raised as that type, with the args and the
    remote traceback as a note."""
    exc = RPC(NOT_A_CHANNEL)._remote_exception(error_reply("KeyError", ["k"], "TB here"), "f")
    assert type(exc) is KeyError
    assert exc.args == ("k",)
    assert "TB here" in "\n".join(exc.__notes__)


@pytest.mark.parametrize(
    "type_name",
    [
        "os.system",  # a dotted path is never imported
        "__import__",  # a builtin that is not a class
        "SystemExit",  # not an Exception subclass
        "KeyboardInterrupt",
        "StopIteration",  # cannot be raised into a coroutine's future
        "Overdrawn",  # a user class that was not listed
        "",
    ],
)
def test_other_names_become_remote_error(type_name: str) -> None:
    """Anything but a builtin Exception or a listed class becomes RemoteError naming it;
    nothing is imported or looked up beyond builtins."""
    exc = RPC(NOT_A_CHANNEL)._remote_exception(error_reply(type_name, [1], "TB"), "f")
    assert type(exc) is hutch.RemoteError
    assert exc.type == type_name
    assert exc.args_ == [1]
    assert exc.remote_traceback == "TB"
    assert "TB" in str(exc)


def test_listed_exception_class_is_re_created() -> None:
    """A class given in ``exceptions=`` is re-created by its name."""
    rpc = RPC(NOT_A_CHANNEL, exceptions=[Overdrawn])
    exc = rpc._remote_exception(error_reply("Overdrawn", ["low", 3]), "f")
    assert type(exc) is Overdrawn
    assert exc.args == ("low", 3)


def test_args_the_class_refuses_fall_back_to_remote_error() -> None:
    """When the args do not fit the class's constructor, the error is a RemoteError."""
    exc = RPC(NOT_A_CHANNEL)._remote_exception(error_reply("UnicodeDecodeError", ["x"]), "f")
    assert type(exc) is hutch.RemoteError
    assert exc.type == "UnicodeDecodeError"


@pytest.mark.parametrize("payload", [None, "boom", {"error": "boom"}, {"other": {}}])
def test_malformed_error_reply_is_a_remote_error(payload: Any) -> None:
    """An error reply not in the RPC error format says so instead of crashing."""
    exc = RPC(NOT_A_CHANNEL)._remote_exception(payload, "f")
    assert type(exc) is hutch.RemoteError
    assert "not in the RPC error format" in str(exc)


def test_pickled_exception_is_only_accepted_by_pickle_rpc() -> None:
    """An exception object as the payload (aio-pika's pickle RPC) is raised only by
    PickleRPC, whose user opted in to unpickling."""
    rpc = PickleRPC(NOT_A_CHANNEL)
    original = ValueError("x")
    assert rpc._remote_exception(pickle.loads(pickle.dumps(original)), "f").args == ("x",)
    assert type(RPC(NOT_A_CHANNEL)._remote_exception(original, "f")) is hutch.RemoteError


def test_error_body_is_aio_pika_jsonrpc_format_plus_traceback() -> None:
    """The error body is ``{"error": {type, message=repr, args, traceback}}``."""
    try:
        raise ValueError("bad", 2)
    except ValueError as exc:
        body = json.loads(RPC(NOT_A_CHANNEL)._error_body(exc))
    error = body["error"]
    assert error["type"] == "ValueError"
    assert error["message"] == "ValueError('bad', 2)"
    assert error["args"] == ["bad", 2]
    assert "Traceback" in error["traceback"]
    assert 'raise ValueError("bad", 2)' in error["traceback"]


def test_error_body_with_unserializable_args_sends_their_repr() -> None:
    """Args the serializer cannot carry are sent as their repr."""
    body = json.loads(RPC(NOT_A_CHANNEL)._error_body(ValueError(b"\x00", {1, 2})))
    assert body["error"]["args"] == ["b'\\x00'", "{1, 2}"]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"reply_path": "fast"}, ValueError),
        ({"concurrency": 0}, ValueError),
        ({"concurrency": 2.5}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"timeout": -1}, ValueError),
        ({"exceptions": [int]}, TypeError),
        ({"exceptions": [Overdrawn, type("Overdrawn", (Exception,), {})]}, ValueError),
        ({"exchange": 5}, TypeError),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], error: type[Exception]) -> None:
    """Misuse of the options raises ValueError/TypeError at construction."""
    with pytest.raises(error):
        RPC(NOT_A_CHANNEL, **options)


async def test_call_before_create_is_refused() -> None:
    """An RPC object that was not started by ``create`` refuses calls with a clear error."""
    with pytest.raises(hutch.ConnectionClosed, match=r"RPC\.create"):
        await RPC(NOT_A_CHANNEL).call("f")


def test_names_for_aio_pika_users() -> None:
    """``JsonRPC`` is ``RPC`` (JSON is the default); MsgpackRPC speaks msgpack."""
    assert JsonRPC is RPC
    assert RPC.CONTENT_TYPE == "application/json"
    assert MsgpackRPC.CONTENT_TYPE == "application/msgpack"
    assert MsgpackRPC(NOT_A_CHANNEL).deserialize(MsgpackRPC(NOT_A_CHANNEL).serialize([1])) == [1]
