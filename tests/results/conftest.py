"""Every result-backend test runs on each backend in BACKENDS.

``make_backend`` yields connected backends and closes them in reverse order. The SQLite backend's
fallback poll is set to 30 s, so a test that waits passes only if the wake-up really works.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from conveyor.results import ResultBackend, open_backend
from tests.conftest import postgres_namespace, redis_namespace
from tests.results.helpers import NoBrokerHost

BACKENDS = ["memory", "sqlite", "redis", "postgresql"]

MakeBackend = Callable[[], Awaitable[ResultBackend]]


def backend_url(kind: str, tmp_path: Path) -> str:
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return f"sqlite://{tmp_path}/results.db?poll=30"


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def make_backend(
    backend_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[MakeBackend]:
    if backend_kind == "redis":
        url = redis_namespace(request)
    elif backend_kind == "postgresql":
        url = postgres_namespace(request)
    else:
        url = backend_url(backend_kind, tmp_path)
    made: list[ResultBackend] = []

    async def make() -> ResultBackend:
        backend = open_backend(url, host=NoBrokerHost())
        await backend.connect()
        made.append(backend)
        return backend

    yield make
    for backend in reversed(made):
        await backend.close()
