"""A Celery 5 service and a conveyor service share one Redis broker with the kombu layout
(``broker_transport_options={'layout': 'kombu'}``): each runs the other's tasks, both ways,
results through the Redis backend; priorities are the routing guide's steps (0 first)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from conveyor.app import App
from conveyor.worker import Worker
from tests.celery_worker import celery_worker

GUIDE_OPTIONS = {"queue_order_strategy": "priority", "priority_steps": list(range(10))}


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A kombu ``global_keyprefix`` of this test's own; its keys are deleted afterwards."""
    name = f"interop-{uuid.uuid4().hex[:8]}:"
    yield name
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{name}*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
async def conveyor_app(redis_url: str, prefix: str) -> AsyncIterator[App]:
    app = App(
        "conveyor-side",
        broker=redis_url,
        result_backend=redis_url,
        config={
            "broker_transport_options": {
                "layout": "kombu",
                "global_keyprefix": prefix,
                **GUIDE_OPTIONS,
            },
            "worker_prefetch_multiplier": 1,
        },
    )
    yield app
    await app.aclose()


def celery_client(redis_url: str, prefix: str) -> Celery:
    client = Celery("client", broker=redis_url, backend=redis_url, set_as_current=False)
    client.conf.broker_transport_options = {"global_keyprefix": prefix, **GUIDE_OPTIONS}
    return client


async def test_celery_client_and_conveyor_worker(
    conveyor_app: App, redis_url: str, prefix: str
) -> None:
    ran: list[int] = []

    @conveyor_app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        ran.append(x)
        return x + y

    queue = "kombu-c2v"
    client = celery_client(redis_url, prefix)

    def send_all() -> tuple[int, list[str]]:
        first = client.send_task("interop.add", (2, 3), queue=queue)
        ids = [
            client.send_task("interop.add", (p, 0), queue=queue, priority=p).id
            for p in (5, 0, 9, 3)
        ]
        return first.id, ids

    try:
        first_id, _ = await asyncio.to_thread(send_all)
        # the first message was sent before any priority one: start after all are queued
        worker = Worker(conveyor_app, queues=[queue], concurrency=1)
        await worker.start()
        try:
            assert await conveyor_app.result(first_id).aget(timeout=20) == 5

            def celery_reads() -> Any:
                return client.AsyncResult(first_id).get(timeout=20)

            assert await asyncio.to_thread(celery_reads) == 5
            deadline = asyncio.get_running_loop().time() + 20
            while len(ran) < 5:
                assert asyncio.get_running_loop().time() < deadline, ran
                await asyncio.sleep(0.05)
        finally:
            await worker.stop()
    finally:
        client.close()
    # The guide: on Redis priority 0 is the highest (steps 0..9 with priority_steps).
    assert ran == [2, 0, 3, 5, 9], ran  # FIFO within step 0, then steps 3, 5, 9


async def test_conveyor_client_and_celery_worker(
    conveyor_app: App, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    queue = "kombu-v2c"
    log = tmp_path / "celery.log"
    order_key = f"{prefix}order"
    # Queue up before the Celery worker starts, so the run order shows the priority steps.
    transport = await conveyor_app.atransport()
    sent = [
        await conveyor_app.asend_task(
            "interop.record", [order_key, str(p)], queue=queue, priority=p
        )
        for p in (7, 1, 4, 0)
    ]
    assert (await transport.queue_stats(queue)).ready == 4
    async with celery_worker(redis_url, [queue], log, backend_url=redis_url, keyprefix=prefix):
        product = await conveyor_app.asend_task("interop.mul", [6, 7], queue=queue)
        failing = await conveyor_app.asend_task("interop.boom", queue=queue)
        try:
            assert await product.aget(timeout=30) == 42
        except Exception:
            pytest.fail("the Celery worker did not answer:\n" + log.read_text())
        with pytest.raises(ValueError, match="raised in a Celery worker"):
            await failing.aget(timeout=30)
        for result in sent:
            await result.aget(timeout=30)
    with redis.Redis.from_url(redis_url) as client:
        order = [v.decode() for v in client.lrange(order_key, 0, -1)]
    assert order == ["0", "1", "4", "7"]


async def test_both_workers_on_one_queue_share_it(
    conveyor_app: App, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    queue = "kombu-mixed"

    @conveyor_app.task(name="interop.mul")
    async def mul(x: int, y: int) -> int:
        await asyncio.sleep(0.05)  # leave the Celery worker its share
        return x * y

    log = tmp_path / "celery.log"
    async with celery_worker(redis_url, [queue], log, backend_url=redis_url, keyprefix=prefix):
        probe = await conveyor_app.asend_task("interop.mul", [1, 1], queue=queue)
        assert await probe.aget(timeout=30) == 1, log.read_text()  # the Celery worker is up
        worker = Worker(conveyor_app, queues=[queue], concurrency=1, hostname="conveyor@mixed")
        await worker.start()
        try:
            results = [
                await conveyor_app.asend_task("interop.mul", [i, 2], queue=queue) for i in range(20)
            ]
            values = [await r.aget(timeout=30) for r in results]
        finally:
            await worker.stop()
    assert values == [i * 2 for i in range(20)]
    assert 0 < worker.processed < 20, worker.processed  # each worker ran some


async def test_rpc_replies_cross_on_the_kombu_layout(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """The seeds' ``CELERY_RESULT_BACKEND = 'rpc'`` with a Redis broker: replies travel as
    kombu messages to the caller's reply queue, both ways."""
    options = {"layout": "kombu", "global_keyprefix": prefix}
    app = App(
        "rpc-side",
        config={
            "broker_url": redis_url,
            "CELERY_RESULT_BACKEND": "rpc",
            "broker_transport_options": options,
        },
    )

    @app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        return x + y

    worker = Worker(app, queues=["kombu-rpc-v"], concurrency=1)
    await worker.start()
    client = Celery("client", broker=redis_url, backend="rpc://", set_as_current=False)
    client.conf.broker_transport_options = {"global_keyprefix": prefix}

    def celery_calls() -> Any:
        try:
            return client.send_task("interop.add", (20, 22), queue="kombu-rpc-v").get(timeout=20)
        finally:
            client.backend.result_consumer.stop()
            client.backend.result_consumer.consumer = None
            client.close()

    try:
        assert await asyncio.to_thread(celery_calls) == 42
        async with celery_worker(
            redis_url, ["kombu-rpc-c"], tmp_path / "celery.log", keyprefix=prefix
        ):
            product = await app.asend_task("interop.mul", [6, 7], queue="kombu-rpc-c")
            assert await product.aget(timeout=30) == 42, (tmp_path / "celery.log").read_text()
    finally:
        await worker.stop()
        await app.aclose()
