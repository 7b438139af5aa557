"""The errors conveyor and Celery share reach the other side as its own types, with real Celery 5
workers and clients on RabbitMQ: revoked (expired), time limit, not registered, retries
exhausted. An unknown task is answered at once, not after the caller's timeout."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import billiard.exceptions
import celery.exceptions
import pytest
from celery import Celery

from conveyor.app import App
from conveyor.errors import MaxRetriesExceeded, NotRegistered, TaskRevoked, TimeLimitExceeded
from conveyor.task import Task
from conveyor.worker import Worker
from tests.celery_worker import celery_worker


@pytest.fixture
async def queue(rabbitmq_url: str) -> AsyncIterator[str]:
    name = f"interop-e-{uuid.uuid4().hex[:8]}"
    yield name
    cleanup = App(broker=rabbitmq_url)
    transport = await cleanup.atransport()
    await transport.delete_queue(name)
    await transport.delete_exchange(name)
    await cleanup.aclose()


def celery_client(rabbitmq_url: str, calls: Callable[[Celery], Any]) -> Any:
    """Run ``calls`` with a Celery client on the rpc:// backend, then close it."""
    client = Celery("client", broker=rabbitmq_url, backend="rpc://", set_as_current=False)
    try:
        return calls(client)
    finally:
        client.backend.result_consumer.stop()
        client.backend.result_consumer.consumer = None
        client.close()


async def test_conveyor_worker_errors_reach_a_celery_caller_as_celerys_types(
    rabbitmq_url: str, queue: str
) -> None:
    app = App("interop", broker=rabbitmq_url, result_backend="rpc://")

    @app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="interop.slow", time_limit=0.5)
    async def slow() -> None:
        await asyncio.sleep(10)

    @app.task(name="interop.give_up", bind=True, max_retries=0)
    def give_up(self: Task) -> None:
        raise self.retry(countdown=0)

    worker = Worker(app, queues=[queue], concurrency=2, hostname="conveyor-side@test")
    await worker.start()

    def calls(client: Celery) -> dict[str, tuple[type[BaseException], str, float]]:
        caught: dict[str, tuple[type[BaseException], str, float]] = {}
        sends = {
            "unknown": lambda: client.send_task("interop.nobody", queue=queue),
            "expired": lambda: client.send_task(
                "interop.add", (1, 2), queue=queue, expires=datetime.now(UTC) - timedelta(1)
            ),
            "slow": lambda: client.send_task("interop.slow", queue=queue),
            "give_up": lambda: client.send_task("interop.give_up", queue=queue),
        }
        for label, send in sends.items():
            started = time.monotonic()
            try:
                send().get(timeout=20)
            except Exception as exc:
                caught[label] = (type(exc), str(exc), time.monotonic() - started)
        return caught

    try:
        caught = await asyncio.to_thread(celery_client, rabbitmq_url, calls)
    finally:
        await worker.stop()
        await app.aclose()
    assert caught["unknown"][0] is celery.exceptions.NotRegistered
    assert "'interop.nobody'" in caught["unknown"][1]
    assert "conveyor-side@test" in caught["unknown"][1]
    assert repr(queue) in caught["unknown"][1]
    assert caught["unknown"][2] < 10  # answered, not timed out
    assert caught["expired"][0] is celery.exceptions.TaskRevokedError
    assert caught["slow"][0] is billiard.exceptions.TimeLimitExceeded
    assert caught["give_up"][0] is celery.exceptions.MaxRetriesExceededError


async def test_celery_worker_errors_reach_a_conveyor_caller_as_conveyors_types(
    rabbitmq_url: str, queue: str, tmp_path: Path
) -> None:
    client = App("client", broker=rabbitmq_url, result_backend="rpc://")
    log = tmp_path / "celery.log"
    try:
        async with celery_worker(rabbitmq_url, [queue], log, pool="prefork"):
            results = {
                "unknown": await client.asend_task("interop.nobody", queue=queue),
                "expired": await client.asend_task(
                    "interop.mul", [1, 2], queue=queue, expires=datetime.now(UTC) - timedelta(1)
                ),
                "slow": await client.asend_task("interop.sleepy", queue=queue),
                "give_up": await client.asend_task("interop.give_up", queue=queue),
            }
            caught: dict[str, BaseException] = {}
            for label, result in results.items():
                try:
                    await result.aget(timeout=30)
                except Exception as exc:
                    caught[label] = exc
    finally:
        await client.aclose()
    assert set(caught) == set(results), log.read_text()
    assert isinstance(caught["unknown"], NotRegistered), caught
    assert "interop.nobody" in str(caught["unknown"])
    assert isinstance(caught["expired"], TaskRevoked), caught
    assert isinstance(caught["slow"], TimeLimitExceeded), caught
    assert isinstance(caught["give_up"], MaxRetriesExceeded), caught
