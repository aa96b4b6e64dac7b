"""Start, stop, restart and freeze a private RabbitMQ node (Debian's ``rabbitmq-server``).

Shared by the test suite (``tests/conftest.py``) and the benchmarks (``bench/``), so there is one
recipe for a node on free loopback ports in a folder of its own. As a command::

    python scripts/rabbitmq_node.py start DIR      # prints the AMQP URL, leaves the node running
    python scripts/rabbitmq_node.py stop DIR

The recipe follows ../shared/rabbitmq.md: no systemd, loopback only, epmd bound to 127.0.0.1, a
distribution port of our own so several nodes can live on one machine, readiness judged by the AMQP
port accepting connections (``rabbitmq-diagnostics ping`` answers before it does).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SBIN = Path("/usr/sbin")
START_TIMEOUT = 60.0


class NodeError(RuntimeError):
    """The node could not be installed, started or stopped; the message says why."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def installed() -> bool:
    """Whether Debian's ``rabbitmq-server`` package is installed."""
    return (SBIN / "rabbitmq-server").exists()


def install() -> None:
    """Install ``rabbitmq-server`` with apt (needs root); a no-op when it is there."""
    if installed():
        return
    if os.geteuid() != 0:
        raise NodeError(
            "rabbitmq-server is not installed; run: sudo apt-get install rabbitmq-server"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "rabbitmq-server"], check=True, env=env)


@dataclass
class Node:
    """One RabbitMQ node living in ``folder``; ports are chosen when it is first started."""

    folder: Path
    port: int = 0
    dist_port: int = 0
    name: str = ""
    extra_conf: str = ""
    _pid: int | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The AMQP URL of the node (user guest, default vhost)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.folder / "rabbit.pid"

    def _env(self) -> dict[str, str]:
        d = self.folder
        return dict(
            os.environ,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            ERL_CRASH_DUMP=str(d / "log" / "erl_crash.dump"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )

    def _prepare(self) -> None:
        if not self.port:
            self.port = free_port()
            self.dist_port = free_port()
            self.name = f"hutch{self.port}@localhost"
        d = self.folder
        (d / "mnesia").mkdir(parents=True, exist_ok=True)
        (d / "log").mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "distribution.listener.interface = 127.0.0.1\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = warning\n" + self.extra_conf
        )
        (d / "enabled_plugins").write_text("[].\n")
        (d / "node.json").write_text(
            json.dumps({"port": self.port, "dist_port": self.dist_port, "name": self.name})
        )
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(d)], check=True)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the node and return once its AMQP port accepts connections."""
        if not installed():
            raise NodeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        self._prepare()
        env = self._env()
        if os.geteuid() == 0:
            # epmd must be up before the node, else the node starts one bound to 0.0.0.0.
            subprocess.run(
                [
                    "su",
                    "rabbitmq",
                    "-s",
                    "/bin/sh",
                    "-c",
                    "ERL_EPMD_ADDRESS=127.0.0.1 epmd -daemon",
                ],
                check=False,
                env=env,
            )
        with (self.folder / "log" / "start.out").open("ab") as out:
            subprocess.run(
                [str(SBIN / "rabbitmq-server"), "-detached"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
            )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise NodeError(
                    f"RabbitMQ node {self.name} did not open port {self.port} within "
                    f"{timeout:.0f} s; see {self.folder / 'log'} or run rabbitmq-server in the "
                    "foreground"
                )
            time.sleep(0.1)
        self._pid = None

    @property
    def pid(self) -> int:
        """The process id of the node's Erlang VM (beam.smp)."""
        if self._pid is None:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError, ValueError):
                    self._pid = int(self.pid_file.read_text().strip())
                    break
                if time.monotonic() > deadline:
                    raise NodeError(f"no pid file at {self.pid_file}")
                time.sleep(0.05)
        return self._pid

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` and return what it printed."""
        proc = subprocess.run(
            [str(SBIN / "rabbitmqctl"), "-q", "-n", self.name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise NodeError(f"rabbitmqctl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def stop(self) -> None:
        """Stop the node and wait until its VM has exited; kill it if it does not go."""
        pid = self.pid if self.pid_file.exists() else None
        with contextlib.suppress(NodeError, subprocess.TimeoutExpired):
            self.ctl("stop", str(self.pid_file), timeout=30)
        if pid is not None:
            self.cont()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        self._pid = None

    def kill(self) -> None:
        """Kill the VM with SIGKILL (a crash, not a shutdown)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        self._pid = None

    def restart(self) -> None:
        """Stop the node and start it again on the same ports, with the same data."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """Stop the VM with SIGSTOP: sockets stay open, nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        """Resume a frozen VM with SIGCONT."""
        with contextlib.suppress(ProcessLookupError, NodeError):
            os.kill(self.pid, signal.SIGCONT)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the node's VM has used so far, read from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def remove(self) -> None:
        """Stop the node and delete its folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def load(folder: Path) -> Node:
    """The node whose folder is ``folder``, as a previous ``start`` left it."""
    info = json.loads((folder / "node.json").read_text())
    return Node(folder, port=info["port"], dist_port=info["dist_port"], name=info["name"])


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in {"start", "stop", "install"}:
        print(
            "usage: rabbitmq_node.py start|stop DIR  |  rabbitmq_node.py install -", file=sys.stderr
        )
        return 2
    command, folder = argv[0], Path(argv[1]).resolve()
    if command == "install":
        install()
    elif command == "start":
        node = Node(folder)
        node.start()
        print(node.url)
    else:
        load(folder).remove()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
