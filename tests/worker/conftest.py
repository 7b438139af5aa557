"""In-process worker fixtures on the memory:// broker (fast), shared by tests/worker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conveyor.app import App
from conveyor.worker import Worker

StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
def memory_url() -> str:
    return f"memory://test-{uuid.uuid4().hex}"


@pytest.fixture
async def app(memory_url: str) -> AsyncIterator[App]:
    app = App("tests", broker=memory_url, result_backend=memory_url)
    yield app
    await app.aclose()


@pytest.fixture
async def start_worker(app: App) -> AsyncIterator[StartWorker]:
    workers: list[Worker] = []

    async def start(target: App | None = None, **options: Any) -> Worker:
        options.setdefault("concurrency", 4)
        options.setdefault("shutdown_grace", 5.0)
        worker = Worker(target or app, **options)
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in reversed(workers):
        await worker.stop()
