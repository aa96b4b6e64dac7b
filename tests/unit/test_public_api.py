"""The public namespace: ``hutch`` and ``hutch.patterns`` export exactly their public names."""

from __future__ import annotations

import types

import pytest

import hutch
import hutch.patterns


@pytest.mark.parametrize("module", [hutch, hutch.patterns], ids=lambda m: m.__name__)
def test_all_lists_every_public_name_sorted(module: types.ModuleType) -> None:
    """``__all__`` is sorted and names every public, non-module attribute, and nothing else."""
    exported = list(module.__all__)
    assert exported == sorted(exported)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(exported) - {"__version__"} == public


def test_every_error_descends_from_hutch_error() -> None:
    """One exception tree: every exported exception class has ``HutchError`` as an ancestor."""
    values = [getattr(hutch, name) for name in hutch.__all__]
    errors = [v for v in values if isinstance(v, type) and issubclass(v, BaseException)]
    assert errors
    for error in errors:
        assert issubclass(error, hutch.HutchError), error


def test_connection_errors_are_builtin_connection_errors_and_timeouts_are_timeouts() -> None:
    """Code that catches the builtins catches hutch's errors too."""
    assert issubclass(hutch.ConnectionLost, ConnectionError)
    assert issubclass(hutch.ConnectError, ConnectionError)
    assert issubclass(hutch.CallTimeout, TimeoutError)
    assert issubclass(hutch.ConnectTimeout, TimeoutError)


def test_the_seed_imports_work() -> None:
    """The seed's imports, with aio_pika replaced by hutch, resolve."""
    from hutch import connect_robust
    from hutch.patterns import RPC, Master, NackMessage, RejectMessage

    assert callable(connect_robust)
    assert all(isinstance(cls, type) for cls in (RPC, Master, NackMessage, RejectMessage))
