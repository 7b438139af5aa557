"""Workflows on every broker: an App whose tasks and worker share one fresh queue.

``flow`` is parametrized over memory (memory results), sqlite (its own file's results), redis
(Redis results) and amqp (RabbitMQ, Redis results: chords need a backend that joins); the
worker runs in this process on the real broker.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conveyor.app import App
from conveyor.canvas import signature
from conveyor.task import Task
from conveyor.worker import Worker
from tests.conftest import redis_namespace

BROKERS = ["memory", "sqlite", "redis", "amqp"]


@dataclass
class Flow:
    """An App with the workflow tasks registered and a worker consuming its queue."""

    app: App
    queue: str
    tasks: dict[str, Task]
    log: list[Any]

    def __getattr__(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            raise AttributeError(name) from None


def define(app: App, log: list[Any]) -> dict[str, Task]:
    """The tasks every workflow test uses; ``record`` appends its arguments to ``log``."""

    @app.task(name="wf.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="wf.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="wf.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="wf.listed")
    def listed(values: list[Any]) -> list[Any]:
        return values

    @app.task(name="wf.boom")
    def boom(*args: Any) -> None:
        raise ValueError(f"boom with {list(args)}")

    @app.task(name="wf.record")
    def record(*args: Any) -> list[Any]:
        log.append(list(args))
        return list(args)

    @app.task(name="wf.forward")
    async def forward(sig: dict[str, Any], value: Any) -> str:
        """Send the signature it was given (a task argument) with ``value``; its task id."""
        sent = await signature(sig, app=app).adelay(value)
        return str(sent.id)

    return {
        "add": add,
        "mul": mul,
        "tsum": tsum,
        "listed": listed,
        "boom": boom,
        "record": record,
        "forward": forward,
    }


def urls(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(broker URL, result backend URL) for ``kind``."""
    if kind == "memory":
        name = f"memory://wf-{uuid.uuid4().hex}"
        return name, name
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.db'}"
        return url, url
    if kind == "redis":
        return request.getfixturevalue("redis_url"), redis_namespace(request)
    return request.getfixturevalue("rabbitmq_url"), redis_namespace(request)


@pytest.fixture(params=BROKERS)
async def flow(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Flow]:
    broker, backend = urls(request.param, request, tmp_path)
    queue = f"wf-{uuid.uuid4().hex[:12]}"
    app = App("wf", broker=broker, result_backend=backend, config={"task_default_queue": queue})
    log: list[Any] = []
    tasks = define(app, log)
    worker = Worker(app, concurrency=4, shutdown_grace=5.0)
    await worker.start()
    try:
        yield Flow(app, queue, tasks, log)
    finally:
        await worker.stop()
        cleanup = App(broker=broker)
        try:
            if request.param in ("redis", "amqp"):
                transport = await cleanup.atransport()
                await transport.delete_queue(queue)
        finally:
            await cleanup.aclose()
        await app.aclose()
