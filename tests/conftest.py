"""Shared fixtures: which external brokers are reachable, and how a test asks for one.

A test that needs RabbitMQ or Redis uses the ``rabbitmq_url`` / ``redis_url`` fixture. On a laptop
without the service it is skipped; with ``CI`` set in the environment it fails instead, so CI never
skips a broker test silently.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
import redis

RABBITMQ_URL = os.environ.get("CONVEYOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or, under CI, fail) the calling test when ``host:port`` does not answer."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run every broker test", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def rabbitmq_url() -> str:
    """The RabbitMQ URL for tests, after checking that RabbitMQ answers."""
    require_service("RabbitMQ", "127.0.0.1", 5672)
    return RABBITMQ_URL


@pytest.fixture
def redis_url() -> str:
    """The Redis URL for tests (database 15), after checking that Redis answers."""
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


def redis_namespace(request: pytest.FixtureRequest) -> str:
    """A redis:// URL (database 15) with a key prefix of its own, deleted after the test."""
    base = request.getfixturevalue("redis_url")
    prefix = f"conveyor-test-{uuid.uuid4().hex}:"

    def cleanup() -> None:
        with redis.Redis.from_url(base) as client:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)

    request.addfinalizer(cleanup)
    return f"{base}?key_prefix={prefix}"


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client of the test database, to look at or break what conveyor stored."""
    with redis.Redis.from_url(redis_url) as client:
        yield client


def kill_redis_clients(client: redis.Redis, name: str) -> int:
    """``CLIENT KILL`` every connection whose client name is ``name``; return how many."""
    killed = 0
    for info in client.client_list():
        if info.get("name") == name:
            client.client_kill_filter(_id=info["id"])
            killed += 1
    return killed


POSTGRES_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def postgres_url() -> str:
    """The PostgreSQL URL for tests (database ``test``), after checking that PostgreSQL answers."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


def postgres_namespace(request: pytest.FixtureRequest) -> str:
    """A postgresql:// URL with a result table of its own, dropped (with its schema row and
    chord table) after the test."""
    import psycopg

    base = request.getfixturevalue("postgres_url")
    table = f"conveyor_test_{uuid.uuid4().hex[:16]}"

    def cleanup() -> None:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_chords")
            conn.execute("DELETE FROM conveyor_schema WHERE name = %s", (table,))

    request.addfinalizer(cleanup)
    return f"{base}?table={table}"
