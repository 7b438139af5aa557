"""Celery 5 and conveyor talk to each other over RabbitMQ: task protocol v2 and rpc:// replies."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from celery import Celery

from conveyor.app import App
from conveyor.errors import ResultTimeout
from conveyor.worker import Worker
from tests.celery_worker import celery_worker


@pytest.fixture
async def queues(rabbitmq_url: str) -> AsyncIterator[tuple[str, str]]:
    names = (f"interop-c-{uuid.uuid4().hex[:8]}", f"interop-v-{uuid.uuid4().hex[:8]}")
    yield names
    cleanup = App(broker=rabbitmq_url)
    transport = await cleanup.atransport()
    for name in names:
        await transport.delete_queue(name)
        await transport.delete_exchange(name)
    await cleanup.aclose()


async def test_celery_client_and_conveyor_worker(
    rabbitmq_url: str, queues: tuple[str, str]
) -> None:
    queue = queues[1]
    app = App("interop", broker=rabbitmq_url, result_backend="rpc://")

    @app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        return x + y

    worker = Worker(app, queues=[queue], concurrency=2)
    await worker.start()
    celery = Celery("client", broker=rabbitmq_url, backend="rpc://", set_as_current=False)

    def celery_client() -> int:
        try:
            result = celery.send_task("interop.add", (2, 3), queue=queue)
            value: int = result.get(timeout=15)
            return value
        finally:
            celery.backend.result_consumer.stop()
            celery.backend.result_consumer.consumer = None
            celery.close()

    try:
        assert await asyncio.to_thread(celery_client) == 5
    finally:
        await worker.stop()


async def test_conveyor_client_and_celery_worker(
    rabbitmq_url: str, queues: tuple[str, str], tmp_path: Path
) -> None:
    queue = queues[0]
    log = tmp_path / "celery.log"
    client = App("client", broker=rabbitmq_url, result_backend="rpc://")
    async with celery_worker(rabbitmq_url, [queue], log):
        try:
            product = await client.asend_task("interop.mul", [6, 7], queue=queue)
            failing = await client.asend_task("interop.boom", queue=queue)
            try:
                assert await product.aget(timeout=30) == 42
            except ResultTimeout:
                pytest.fail("the Celery worker did not answer:\n" + log.read_text())
            with pytest.raises(ValueError, match="raised in a Celery worker") as info:
                await failing.aget(timeout=30)
            assert "celery_side.py" in info.value.remote_traceback  # type: ignore[attr-defined]
        finally:
            await client.aclose()
