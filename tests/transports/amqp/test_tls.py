"""``amqps://``: the RabbitMQ transport over TLS, verified against a certificate authority file.

The RabbitMQ here listens without TLS, so the test puts a TLS-terminating relay (a self-signed
certificate for ``localhost``, made with ``openssl``) in front of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conveyor import Envelope, Queue
from conveyor.errors import BrokerUnavailable
from conveyor.transports.amqp import AMQPTransport

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [
        *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
        *("-keyout", str(key), "-out", str(cert)),
    ]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


@pytest.fixture
async def tls_relay(rabbitmq_url: str, tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """A TLS listener on a free port that relays every connection to RabbitMQ's plain port."""
    cert, key = await asyncio.to_thread(make_certificate, tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    target = urlsplit(rabbitmq_url)
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port or 5672)
        for task in (pipe(reader, up_writer), pipe(up_reader, writer)):
            running = asyncio.ensure_future(task)
            tasks.add(running)
            running.add_done_callback(tasks.discard)

    server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port, cert
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_amqps_verifies_the_broker_and_carries_messages(
    tls_relay: tuple[int, Path],
) -> None:
    port, cert = tls_relay
    url = f"amqps://guest:guest@localhost:{port}/?cafile={cert}"
    t = AMQPTransport.from_url(url)
    await t.connect()
    q = f"amqp-tls.{uuid.uuid4().hex}"
    try:
        await t.declare_queue(Queue(q, durable=False, exclusive=True))
        assert await t.publish(Envelope(body=b"over tls"), routing_key=q) == 1
        got = await t.get(q, no_ack=True)
        assert got is not None
        assert got.envelope.body == b"over tls"
    finally:
        await t.close()
    # Without the CA file the self-signed certificate is refused.
    with pytest.raises(BrokerUnavailable):
        await AMQPTransport.from_url(f"amqps://guest:guest@localhost:{port}/").connect()
    lax = AMQPTransport.from_url(f"amqps://guest:guest@localhost:{port}/?verify=false")
    await lax.connect()
    await lax.close()
