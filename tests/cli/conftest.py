"""Fixtures for the operations commands: one broker per test on SQLite, Redis and RabbitMQ.

Redis gets a key prefix of its own; on the shared RabbitMQ every test uses names of its own
(``names``) and ``forget`` deletes the queues and exchanges it lists after the test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.transports import open_transport
from tests.conftest import redis_namespace
from tests.worker.helpers import ROOT

BROKERS = ["sqlite", "redis", "amqp"]


@pytest.fixture(params=BROKERS)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh broker (or namespace of a shared one) for this test."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'broker.db'}"
    if request.param == "redis":
        return redis_namespace(request)
    return str(request.getfixturevalue("rabbitmq_url"))


@pytest.fixture
def names() -> Callable[[str], str]:
    """``names("q")`` -> a name unique to this test, e.g. ``q-3f2a...``."""
    run = uuid.uuid4().hex[:10]
    return lambda prefix: f"{prefix}-{run}"


async def _delete(url: str, entities: list[str]) -> None:
    transport = open_transport(url)
    await transport.connect()
    try:
        for name in entities:
            await transport.delete_queue(name)
            await transport.delete_exchange(name)
    finally:
        await transport.close()


@pytest.fixture
def forget(broker_url: str) -> Iterator[list[str]]:
    """A list of names: queues and exchanges of those names are deleted after the test."""
    entities: list[str] = []
    yield entities
    if entities:
        asyncio.run(_delete(broker_url, entities))


def cli_env(broker_url: str, *paths: Path, **extra: str) -> dict[str, str]:
    """The environment for a ``conveyor`` child: this tree first on the path, the broker set,
    the shell's history in a directory of the test's own."""
    env = dict(os.environ)
    env["CONVEYOR_BROKER_URL"] = broker_url
    env.pop("CONVEYOR_RESULT_BACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [*map(str, paths), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env.update(extra)
    return env


def conveyor(
    *args: str, env: dict[str, str], input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``conveyor ARGS...`` as a user would; its output is text."""
    return subprocess.run(
        [sys.executable, "-c", "from conveyor.cli.main import main; main()", *args],
        env=env,
        cwd=ROOT,
        input="" if input is None else input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
