"""The transport conformance suite's fixtures: every test runs on every transport in TRANSPORTS.

To add a transport: put its id in ``TRANSPORTS`` and a branch in ``_url_for`` (use the
``rabbitmq_url`` / ``redis_url`` fixtures from ``tests/conftest.py`` so the test skips without the
service, and fails under ``CI``). ``make_transport`` connects transports to ONE broker per test
(several connections see each other, as separate clients of one RabbitMQ would) and closes them
in reverse order at the end. ``names`` makes unique entity names, so tests never collide on a
shared broker.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from conveyor.transports import Transport, open_transport
from tests.conftest import redis_namespace

TRANSPORTS = ["memory", "sqlite", "redis", "amqp"]

MakeTransport = Callable[..., Awaitable[Transport]]


def _url_for(transport_id: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if transport_id == "memory":
        return f"memory://conformance-{uuid.uuid4().hex}"
    if transport_id == "sqlite":
        return f"sqlite://{tmp_path / 'broker.db'}"
    if transport_id == "redis":
        return redis_namespace(request)
    if transport_id == "amqp":
        return str(request.getfixturevalue("rabbitmq_url"))
    raise AssertionError(f"no URL for transport {transport_id!r}")


async def forget_declared(transport: Transport) -> None:
    """On the shared RabbitMQ, delete the queues and exchanges a test declared through
    ``transport`` (its delay levels stay: every test shares them)."""
    from conveyor.transports.amqp import DELAY_PREFIX, AMQPTransport

    if not isinstance(transport, AMQPTransport):
        return
    declared = [key for key in transport._session.topology if not key[1].startswith(DELAY_PREFIX)]
    cleaner = AMQPTransport.from_url(transport.url)
    await cleaner.connect()
    try:
        for kind, name, *_ in declared:
            if kind == "queue":
                await cleaner.delete_queue(name)
        for kind, name, *_ in declared:
            if kind == "exchange":
                await cleaner.delete_exchange(name)
    finally:
        await cleaner.close()


@pytest.fixture(params=TRANSPORTS)
def transport_id(request: pytest.FixtureRequest) -> str:
    """The id of the transport under test."""
    return str(request.param)


@pytest.fixture
def broker_url(transport_id: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL naming a fresh broker (or a fresh namespace on a shared one) for this test."""
    return _url_for(transport_id, request, tmp_path)


@pytest.fixture
async def make_transport(broker_url: str) -> AsyncIterator[MakeTransport]:
    """Factory: ``await make_transport(**options)`` returns a connected transport."""
    made: list[Transport] = []

    async def make(options: Mapping[str, Any] | None = None) -> Transport:
        transport = open_transport(broker_url, options)
        await transport.connect()
        made.append(transport)
        return transport

    yield make
    for transport in reversed(made):
        await transport.close()
    for transport in made:
        await forget_declared(transport)


@pytest.fixture
def names() -> Callable[[str], str]:
    """``names("q")`` -> a name unique to this test run, e.g. ``q-3f2a...``."""
    run = uuid.uuid4().hex[:10]
    return lambda prefix: f"{prefix}-{run}"


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list for the OS processes a test starts; those still running are killed after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)
