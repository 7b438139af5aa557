"""Workflows across Celery 5 and conveyor on RabbitMQ with Redis results, both ways: chains,
links, groups and chords sent by one run to the end on the other's workers (protocol v2
embeds; chords join in Celery's Redis keys)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery import chain as celery_chain
from celery import chord as celery_chord
from celery import group as celery_group

from conveyor.app import App
from conveyor.canvas import chord, group
from conveyor.worker import Worker
from tests.canvas.conftest import define
from tests.celery_worker import celery_worker

T = 30.0


@pytest.fixture
async def queue(rabbitmq_url: str) -> AsyncIterator[str]:
    name = f"wf-interop-{uuid.uuid4().hex[:8]}"
    yield name
    cleanup = App(broker=rabbitmq_url)
    transport = await cleanup.atransport()
    await transport.delete_queue(name)
    await cleanup.aclose()


@pytest.fixture
def celery_client(rabbitmq_url: str, redis_url: str) -> Iterator[Celery]:
    client = Celery("client", broker=rabbitmq_url, backend=redis_url, set_as_current=False)
    yield client
    client.close()


async def test_celery_chain_chord_group_and_link_run_on_a_conveyor_worker(
    rabbitmq_url: str, redis_url: str, queue: str, celery_client: Celery
) -> None:
    app = App("interop", broker=rabbitmq_url, result_backend=redis_url)
    log: list[Any] = []
    define(app, log)
    worker = Worker(app, queues=[queue], concurrency=4)
    await worker.start()

    def sig(name: str, *args: Any) -> Any:
        return celery_client.signature(name, args, queue=queue)

    def run() -> tuple[Any, ...]:
        chained = celery_chain(sig("wf.add", 1, 2), sig("wf.add", 10), sig("wf.mul", 2))
        joined = celery_chord([sig("wf.mul", i, 3) for i in range(5)], sig("wf.listed"))
        fanned = celery_group(sig("wf.add", i, i) for i in range(4))
        linked = sig("wf.add", 4, 4)
        failing = celery_chain(sig("wf.add", 1, 2), sig("wf.boom"), sig("wf.add", 1))
        with pytest.raises(ValueError, match=r"boom with \[3\]"):
            failing.apply_async().get(timeout=T)
        broken = celery_chord([sig("wf.add", 1, 1), sig("wf.boom", 5)], sig("wf.listed"))
        sent = broken.apply_async()
        with pytest.raises(ValueError, match=r"boom with \[5\]"):
            sent.get(timeout=T)  # Celery raises a failed header task's error first
        body_error = celery_client.AsyncResult(sent.id).get(timeout=T, propagate=False)
        assert type(body_error).__name__ == "ChordError"
        assert re.search(r"Dependency .* raised ValueError", str(body_error))
        return (
            chained.apply_async().get(timeout=T),
            joined.apply_async().get(timeout=T),
            fanned.apply_async().get(timeout=T),
            linked.apply_async(link=sig("wf.record", "linked")).get(timeout=T),
        )

    try:
        chained, joined, fanned, linked = await asyncio.to_thread(run)
        assert chained == 26
        assert joined == [0, 3, 6, 9, 12]
        assert fanned == [0, 2, 4, 6]
        assert linked == 8
        for _ in range(200):
            if log:
                break
            await asyncio.sleep(0.05)
        assert log == [[8, "linked"]]
    finally:
        await worker.stop()


async def test_conveyor_chain_group_chord_and_link_run_on_a_celery_worker(
    rabbitmq_url: str, redis_url: str, queue: str, tmp_path: Path
) -> None:
    """Also: chords whose header tasks run half on the Celery worker, half on a conveyor one,
    sent by conveyor and by Celery, complete (both join in Celery's Redis keys)."""
    log_path = tmp_path / "celery.log"
    async with celery_worker(
        rabbitmq_url,
        [queue],
        log_path,
        backend_url=redis_url,
        app="tests.canvas.celery_side",
        hostname=f"{queue}@%h",
    ):
        client = App("client", broker=rabbitmq_url, result_backend=redis_url)
        # A conveyor worker too, on a queue of its own: mixed chords have parts on both.
        conveyor_queue = f"{queue}-conveyor"
        conveyor_side = App("conveyor-side", broker=rabbitmq_url, result_backend=redis_url)
        define(conveyor_side, [])
        conveyor_worker = Worker(conveyor_side, queues=[conveyor_queue], concurrency=2)
        await conveyor_worker.start()
        celery_client = Celery(
            "client", broker=rabbitmq_url, backend=redis_url, set_as_current=False
        )

        def sig(name: str, *args: Any) -> Any:
            return client.signature(name, args, queue=queue)

        def mixed_header(make: Any) -> list[Any]:
            return [
                make("wf.mul", (i, 3), queue=queue if i % 2 else conveyor_queue) for i in range(6)
            ]

        def celery_sends_a_mixed_chord() -> Any:
            try:
                header = mixed_header(celery_client.signature)
                body = celery_client.signature("wf.listed", queue=queue)
                return celery_chord(header, body).apply_async().get(timeout=T)
            finally:
                celery_client.close()

        try:
            chained = await (
                sig("wf.add", 1, 2) | sig("wf.add", 10) | sig("wf.mul", 2)
            ).aapply_async()
            header = [sig("wf.mul", i, 3) for i in range(5)]
            joined = await chord(header, sig("wf.listed")).aapply_async()
            fanned = await group(sig("wf.add", i, i) for i in range(4)).aapply_async()
            linked_id = str(uuid.uuid4())
            first = await sig("wf.add", 4, 4).aapply_async(
                link=sig("wf.mul", 10).set(task_id=linked_id)
            )
            try:
                assert await first.aget(timeout=T) == 8
                assert await client.result(linked_id).aget(timeout=T) == 80
                mixed = mixed_header(
                    lambda name, args, queue: client.signature(name, args, queue=queue)
                )
                joined_mixed = await chord(mixed, sig("wf.listed")).aapply_async()
                assert await joined_mixed.aget(timeout=T) == [0, 3, 6, 9, 12, 15]
                assert await asyncio.to_thread(celery_sends_a_mixed_chord) == [0, 3, 6, 9, 12, 15]
                assert await chained.aget(timeout=T) == 26
                assert await joined.aget(timeout=T) == [0, 3, 6, 9, 12]
                assert await fanned.aget(timeout=T) == [0, 2, 4, 6]
            except Exception:
                pytest.fail("the Celery worker did not finish:\n" + log_path.read_text())
        finally:
            await client.aclose()
            await conveyor_worker.stop()
            cleanup = App(broker=rabbitmq_url)
            await (await cleanup.atransport()).delete_queue(conveyor_queue)
            await cleanup.aclose()


async def test_celery_chain_and_group_with_rpc_results_run_on_a_conveyor_worker(
    rabbitmq_url: str, queue: str
) -> None:
    app = App("interop-rpc", broker=rabbitmq_url, result_backend="rpc://")
    define(app, [])
    worker = Worker(app, queues=[queue], concurrency=4)
    await worker.start()
    client = Celery("client", broker=rabbitmq_url, backend="rpc://", set_as_current=False)

    def sig(name: str, *args: Any) -> Any:
        return client.signature(name, args, queue=queue)

    def run() -> tuple[Any, Any]:
        try:
            chained = celery_chain(sig("wf.add", 1, 2), sig("wf.mul", 5)).apply_async()
            fanned = celery_group(sig("wf.add", i, i) for i in range(3)).apply_async()
            return chained.get(timeout=T), fanned.get(timeout=T)
        finally:
            client.backend.result_consumer.stop()
            client.backend.result_consumer.consumer = None
            client.close()

    try:
        assert await asyncio.to_thread(run) == (15, [0, 2, 4])
    finally:
        await worker.stop()
