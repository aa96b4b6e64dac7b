"""amqps:// against a RabbitMQ node with a TLS listener: certificate verification with the
right CA, refusal with a wrong CA or host name, the ``ssl=`` and ``?cafile=`` options, and clear
errors when TLS and plain ports are mixed up."""

from __future__ import annotations

import os
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import hutch
from hutch.amqp import connect
from tests.support.brokers import Node, rabbitmq_node

SERVER_EXT = (
    "subjectAltName=DNS:localhost\n"
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth\n"
    "authorityKeyIdentifier=keyid,issuer\n"
    "subjectKeyIdentifier=hash\n"
)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.pem", "-days", "30", "-subj", f"/CN=hutch-test-{name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip


def make_server_cert(folder: Path) -> None:
    """A certificate for ``localhost`` only (not 127.0.0.1), signed by ca.pem."""
    (folder / "server.ext").write_text(SERVER_EXT)
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost",
        cwd=folder,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "30", "-extfile", "server.ext",
        cwd=folder,
    )  # fmt: skip


@dataclass
class TlsBroker:
    node: Node
    tls_port: int
    certs: Path

    @property
    def ca(self) -> str:
        return str(self.certs / "ca.pem")

    @property
    def other_ca(self) -> str:
        return str(self.certs / "other-ca.pem")

    def url(self, host: str = "localhost", query: str = "") -> str:
        suffix = f"?{query}" if query else ""
        return f"amqps://guest:guest@{host}:{self.tls_port}/{suffix}"


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """A node of its own with a TLS listener, its CA, and an unrelated CA."""
    if not rabbitmq_node.installed():
        message = "rabbitmq-server is not installed; scripts/test.sh installs it"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    certs = tmp_path_factory.mktemp("certs")
    make_ca(certs, "ca")
    make_ca(certs, "other-ca")
    make_server_cert(certs)
    folder = Path(tempfile.mkdtemp(prefix="hutch-tls-"))
    os.chmod(folder, 0o755)
    tls = folder / "tls"
    tls.mkdir()
    for file in ("ca.pem", "server.pem", "server.key"):
        (tls / file).write_bytes((certs / file).read_bytes())
    tls_port = rabbitmq_node.free_port()
    node = Node(
        folder,
        extra_conf=(
            f"listeners.ssl.default = 127.0.0.1:{tls_port}\n"
            f"ssl_options.cacertfile = {tls / 'ca.pem'}\n"
            f"ssl_options.certfile = {tls / 'server.pem'}\n"
            f"ssl_options.keyfile = {tls / 'server.key'}\n"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
        ),
    )
    try:
        node.start()
        # The TLS listener may open a moment after the plain one that start() waited for.
        deadline = time.monotonic() + 30
        while not rabbitmq_node.port_open(tls_port):
            if time.monotonic() > deadline:
                raise rabbitmq_node.NodeError(f"the TLS port {tls_port} never opened")
            time.sleep(0.05)
    except rabbitmq_node.NodeError as exc:
        node.remove()
        if os.environ.get("CI"):
            pytest.fail(f"could not start the TLS node: {exc}", pytrace=False)
        pytest.skip(f"could not start the TLS node: {exc}")
    try:
        yield TlsBroker(node, tls_port, certs)
    finally:
        node.remove()


async def test_right_ca_through_the_ssl_option(tls_broker: TlsBroker) -> None:
    """amqps:// with ssl=<context trusting the CA> connects, verifies, and carries messages."""
    context = ssl.create_default_context(cafile=tls_broker.ca)
    async with await connect(tls_broker.url(), ssl=context) as connection:
        assert connection.url.startswith("amqps://")
        channel = await connection.channel()
        queue = (await channel.queue_declare("", exclusive=True)).queue
        await channel.publish(b"over TLS", queue)
        got = await channel.get(queue, no_ack=True)
        assert got is not None
        assert got.body == b"over TLS"


async def test_right_ca_through_the_cafile_option(tls_broker: TlsBroker) -> None:
    """``?cafile=`` in the URL is enough to verify the broker (and works for connect_robust)."""
    async with await hutch.connect_robust(tls_broker.url(query=f"cafile={tls_broker.ca}")) as c:
        assert c.is_connected


async def test_wrong_ca_is_refused_with_a_clear_connect_error(tls_broker: TlsBroker) -> None:
    """A broker certificate that the given CA did not sign is refused: ConnectError saying
    the verification failed and what to pass."""
    context = ssl.create_default_context(cafile=tls_broker.other_ca)
    with pytest.raises(hutch.ConnectError, match="TLS certificate verification failed") as e:
        await connect(tls_broker.url(), ssl=context)
    assert "CA that signed the broker's certificate" in str(e.value)
    assert isinstance(e.value.__cause__, ssl.SSLCertVerificationError)


async def test_system_trust_store_does_not_trust_a_private_ca(tls_broker: TlsBroker) -> None:
    """Without a CA option hutch verifies against the system store, which refuses the test CA
    (verification is on by default)."""
    with pytest.raises(hutch.ConnectError, match="TLS certificate verification failed"):
        await connect(tls_broker.url())


async def test_host_name_not_in_the_certificate_is_refused(tls_broker: TlsBroker) -> None:
    """The certificate names localhost only: connecting to 127.0.0.1 fails verification."""
    with pytest.raises(hutch.ConnectError, match="mismatch") as caught:
        await connect(tls_broker.url("127.0.0.1", f"cafile={tls_broker.ca}"))
    assert "host name the certificate names" in str(caught.value)


async def test_no_verify_option_skips_verification(tls_broker: TlsBroker) -> None:
    """``?no_verify_ssl=true`` connects without checking the certificate (opt-in)."""
    async with await connect(tls_broker.url("127.0.0.1", "no_verify_ssl=true")) as connection:
        assert connection.is_connected


async def test_amqps_to_a_plain_port_says_tls_failed(tls_broker: TlsBroker) -> None:
    """amqps:// pointed at the plain AMQP port gives a ConnectError about TLS, not a hang."""
    url = f"amqps://guest:guest@localhost:{tls_broker.node.port}/?connection_timeout=5"
    with pytest.raises(hutch.ConnectError, match="TLS"):
        await connect(url, ssl=ssl.create_default_context(cafile=tls_broker.ca))


async def test_plain_amqp_to_the_tls_port_is_a_clear_error(tls_broker: TlsBroker) -> None:
    """amqp:// pointed at the TLS port fails quickly with an error hinting at amqps://."""
    url = f"amqp://guest:guest@127.0.0.1:{tls_broker.tls_port}/?connection_timeout=5"
    with pytest.raises(hutch.HutchConnectionError, match="amqps://"):
        await connect(url)
