"""Fixtures every test can use: the private RabbitMQ broker and unique names."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from tests.support.brokers import BackgroundNode, Broker

_shared = BackgroundNode("shared")
_private = BackgroundNode("private")
_NEEDS_SHARED = {"rabbitmq", "amqp_url", "broker_url"}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Boot the nodes the selected tests need while the other tests run."""
    if os.environ.get("HUTCH_TEST_AMQP_URL"):
        return
    names = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if names & _NEEDS_SHARED:
        _shared.start()
    if "private_rabbitmq" in names:
        _private.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    _shared.stop()
    _private.stop()


@pytest.fixture(scope="session")
def rabbitmq() -> Broker:
    """The suite's RabbitMQ: ``HUTCH_TEST_AMQP_URL`` or a node started for this run."""
    url = os.environ.get("HUTCH_TEST_AMQP_URL")
    if url:
        return Broker(url, None)
    node = _shared.get()
    return Broker(node.url, node)


@pytest.fixture(scope="session")
def private_rabbitmq() -> Broker:
    """A node of its own for tests that stop, restart or freeze the broker."""
    node = _private.get()
    return Broker(node.url, node)


@pytest.fixture
def amqp_url(rabbitmq: Broker) -> str:
    return rabbitmq.url


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A queue/exchange name unique to this test."""
    # AMQP names allow letters, digits, "-_.:" only: parametrized ids bring "[", "]", ...
    label = re.sub(r"[^\w.:-]", "_", request.node.name[:60], flags=re.ASCII)
    return f"test.{label}.{uuid.uuid4().hex[:8]}"
