"""postgresql:// when PostgreSQL goes away: restarted while a worker stores results, a caller
waiting through the restart, and a wrong password. On a private cluster (tests/results/pg_cluster),
never the shared server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.results import ResultMeta, StoreRequest, open_backend
from conveyor.worker import Worker
from tests.results.helpers import NoBrokerHost
from tests.results.pg_cluster import PASSWORD, Cluster, private_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with private_cluster() as made:
        yield made


def ok(task_id: str, value: object) -> StoreRequest:
    return StoreRequest(ResultMeta.success(task_id, value, worker="w1", task="t"))


async def test_stores_and_a_waiter_survive_a_restart(cluster: Cluster) -> None:
    url = f"{cluster.url}?table=survive_{uuid.uuid4().hex[:8]}"
    async with (
        open_backend(url, host=NoBrokerHost()) as writer,
        open_backend(url, host=NoBrokerHost()) as reader,
    ):
        await writer.store(ok("before", 0))
        waiting = asyncio.create_task(reader.wait("after", timeout=90))
        await asyncio.sleep(0.2)
        restarting = asyncio.create_task(asyncio.to_thread(cluster.restart))
        stored = []
        for i in range(40):  # stores keep coming while PostgreSQL restarts
            await writer.store(ok(f"during-{i}", i))
            stored.append(i)
            await asyncio.sleep(0.05)
        await restarting
        await writer.store(ok("after", "made it"))
        assert (await waiting).result == "made it"
        for i in stored:
            meta = await reader.get(f"during-{i}")
            assert meta is not None
            assert meta.result == i


async def test_a_worker_stores_every_result_through_a_restart_before_acking(
    cluster: Cluster,
) -> None:
    broker = f"memory://pg-fault-{uuid.uuid4().hex}"
    url = f"{cluster.url}?table=worker_{uuid.uuid4().hex[:8]}"
    app = App("pg-fault", broker=broker, result_backend=url)

    @app.task(name="fault.square")
    async def square(x: int) -> int:
        await asyncio.sleep(0.02)
        return x * x

    worker = Worker(app, concurrency=4, shutdown_grace=5.0)
    await worker.start()
    try:
        first = [await square.adelay(i) for i in range(10)]
        assert [await r.aget(timeout=30) for r in first] == [i * i for i in range(10)]
        restarting = asyncio.create_task(asyncio.to_thread(cluster.restart))
        results = []
        for i in range(10, 60):
            results.append(await square.adelay(i))
            await asyncio.sleep(0.03)
        await restarting
        # a caller waiting through the restart still gets every result
        values = [await r.aget(timeout=90) for r in results]
        assert values == [i * i for i in range(10, 60)]
        transport = await app.atransport()
        stats = await transport.queue_stats(app.conf.task_default_queue)
        assert (stats.ready, stats.unacked) == (0, 0)
    finally:
        await worker.stop()
        await app.aclose()


async def test_a_wrong_password_is_refused_naming_the_url_without_it(cluster: Cluster) -> None:
    url = cluster.url.replace(PASSWORD, "not-the-password")
    backend = open_backend(url, host=NoBrokerHost())
    with pytest.raises(ConfigurationError, match="password authentication failed") as caught:
        await backend.connect()
    await backend.close()
    assert "not-the-password" not in str(caught.value)
    assert f"postgres:***@127.0.0.1:{cluster.port}/postgres" in str(caught.value)
