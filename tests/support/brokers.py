"""Private RabbitMQ nodes for the test suite, started through scripts/rabbitmq_node.py.

A node boots in a background thread as soon as pytest knows a selected test needs it, so its ~7 s
start overlaps the unit tests. ``HUTCH_TEST_AMQP_URL`` points the suite at a running broker instead
(tests that restart or freeze a broker then start their own node anyway).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import rabbitmq_node  # noqa: E402

Node = rabbitmq_node.Node
NodeError = rabbitmq_node.NodeError


@dataclass
class Broker:
    """What a test gets: the broker's URL and, when the suite started it, its node."""

    url: str
    node: Node | None


class BackgroundNode:
    """A node that starts in a thread; ``get()`` waits for it (or for its failure)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.node: Node | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            # The folder is made only for a node that starts, so test runs leave nothing behind.
            folder = Path(tempfile.mkdtemp(prefix=f"hutch-{self.label}-"))
            os.chmod(folder, 0o755)
            self.node = Node(folder)
            self._thread = threading.Thread(target=self._run, name=f"rabbitmq-{self.label}")
            self._thread.start()

    def _run(self) -> None:
        try:
            if not rabbitmq_node.installed():
                raise NodeError(
                    "rabbitmq-server is not installed; `bash scripts/test.sh` installs it "
                    "(apt-get install rabbitmq-server)"
                )
            assert self.node is not None
            self.node.start()
        except BaseException as exc:  # reported by get()
            self.error = exc

    def get(self) -> Node:
        self.start()
        assert self._thread is not None
        self._thread.join()
        if self.error is not None:
            message = f"could not start a private RabbitMQ node: {self.error}"
            if os.environ.get("CI"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        assert self.node is not None
        return self.node

    def stop(self) -> None:
        if self._thread is not None and self.node is not None:
            self._thread.join()
            self.node.remove()
