"""Real worker processes on the SQLite broker: what a user of ``conveyor worker`` would see."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from conveyor.app import App
from conveyor.errors import TaskRevoked, TimeLimitExceeded
from conveyor.results import State
from tests.worker.helpers import StartProcess, running_workers, wait_consuming, wait_for_file
from tests.worker.proc_app import CONFIG


@pytest.fixture
def broker(tmp_path: Path) -> str:
    # a short lease: a killed worker's messages come back within about a second
    return f"sqlite://{tmp_path}/broker.db?lease=1"


@pytest.fixture
async def client(broker: str) -> AsyncIterator[App]:
    app = App("client", broker=broker, config=CONFIG)
    yield app
    await app.aclose()
    await asyncio.to_thread(app.close)


@pytest.fixture
def start(tmp_path: Path, broker: str) -> Iterator[StartProcess]:
    with running_workers(tmp_path, broker) as start:
        yield start


async def test_sync_and_async_callers(client: App, start: StartProcess) -> None:
    start("w", "-c", "2")
    await wait_consuming(client, "default")
    async_result = await client.asend_task("proc.async_add", [2, 3])
    assert await async_result.aget(timeout=10) == 5

    def sync_caller() -> tuple[int, State, str | None]:
        result = client.send_task("proc.add", [20, 22])
        return result.get(timeout=10), result.state, result.worker

    value, state, worker = await asyncio.to_thread(sync_caller)
    assert (value, state, worker) == (42, State.SUCCESS, "w@test")


async def test_killed_worker_task_runs_again_elsewhere(
    client: App, start: StartProcess, tmp_path: Path
) -> None:
    first = start("first", "-c", "1")
    await wait_consuming(client, "default")
    marker = tmp_path / "started"
    result = await client.asend_task("proc.slow", [1.0, str(marker)])
    await wait_for_file(marker, first)
    first.signal(signal.SIGKILL)
    first.wait(timeout=5)
    marker.unlink()
    start("second", "-c", "1")
    assert await result.aget(timeout=20) == "second@test"
    assert marker.read_text().startswith("second@test")


async def test_unknown_task_is_dead_lettered_and_visible(client: App, start: StartProcess) -> None:
    worker = start("w")
    await wait_consuming(client, "default")
    await client.asend_task("billing.not_here", kwargs={"invoice": 7})
    transport = await client.atransport()
    deadline = time.monotonic() + 10
    dead = None
    while dead is None:
        assert time.monotonic() < deadline, worker.output()
        await asyncio.sleep(0.05)
        try:
            dead = await transport.get("dead_letter")
        except Exception:
            dead = None
    headers = dead.envelope.headers
    assert headers["task"] == "billing.not_here"
    assert headers["x-conveyor-worker"] == "w@test"
    assert headers["x-conveyor-queue"] == "default"
    assert "unknown task" in headers["x-conveyor-dead-letter-reason"]
    log = worker.output()
    assert "billing.not_here" in log
    assert "'default'" in log
    assert "w@test" in log


async def test_priorities_hold_with_prefetch(
    client: App, start: StartProcess, tmp_path: Path
) -> None:
    worker = start("w", "-c", "1", "--prefetch-multiplier", "8")
    await wait_consuming(client, "default")
    log = tmp_path / "order.log"
    marker = tmp_path / "blocking"
    blocker = await client.asend_task("proc.slow", [0.6, str(marker)], priority=9)
    await wait_for_file(marker, worker)
    sent = [("p1", 1), ("p5", 5), ("p2", 2), ("p8", 8), ("p0", 0)]
    results = [
        await client.asend_task("proc.record", [label, str(log)], priority=p) for label, p in sent
    ]
    await blocker.aget(timeout=10)
    for result in results:
        await result.aget(timeout=10)
    assert log.read_text().split() == ["p8", "p5", "p2", "p1", "p0"]


async def test_broadcast_collects_a_result_from_each_worker(
    client: App, start: StartProcess
) -> None:
    start("a", "-Q", "default,everyone")
    start("b", "-Q", "default,everyone")
    await wait_consuming(client, "default", count=2)
    result = await client.asend_task("proc.whoami", queue="everyone")
    replies = await result.acollect(timeout=10, expected=2)
    assert replies == {"a@test": "a@test", "b@test": "b@test"}


async def test_rpc_results_out_of_order_from_a_worker_process(tmp_path: Path, broker: str) -> None:
    app = App("rpc-client", broker=broker, result_backend="rpc://", config=CONFIG)
    try:
        with running_workers(tmp_path, broker, backend="rpc://") as start:
            start("w", "-c", "4")
            await wait_consuming(app, "default")
            results = [await app.asend_task("proc.add", [n, n]) for n in range(8)]
            for n in reversed(range(8)):
                assert await results[n].aget(timeout=10) == 2 * n
    finally:
        await app.aclose()


async def test_retries_expiry_and_time_limit(client: App, start: StartProcess) -> None:
    start("w", "-c", "2")
    await wait_consuming(client, "default")
    flaky = await client.asend_task("proc.flaky", [2])
    expired = await client.asend_task("proc.add", [1, 1], expires=-1)
    overrun = await client.asend_task("proc.overrun")
    assert await flaky.aget(timeout=10) == 2
    with pytest.raises(TaskRevoked):
        await expired.aget(timeout=10)
    with pytest.raises(TimeLimitExceeded):
        await overrun.aget(timeout=10)


async def test_sigterm_lets_the_running_task_finish_and_gives_back_the_rest(
    client: App, start: StartProcess, tmp_path: Path
) -> None:
    worker = start("w", "-c", "1", "--prefetch-multiplier", "4")
    await wait_consuming(client, "default")
    marker = tmp_path / "running"
    running = await client.asend_task("proc.slow", [0.8, str(marker)])
    waiting = [await client.asend_task("proc.add", [i, i]) for i in range(3)]
    await wait_for_file(marker, worker)
    worker.signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 10) == 0
    assert await running.aget(timeout=5) == "w@test"
    for result in waiting:
        assert await result.astate() is State.PENDING
    transport = await client.atransport()
    assert (await transport.queue_stats("default")).ready == 3


async def test_second_signal_stops_at_once_and_the_task_comes_back(
    client: App, start: StartProcess, tmp_path: Path
) -> None:
    worker = start("w", "-c", "1", "--shutdown-grace", "30")
    await wait_consuming(client, "default")
    marker = tmp_path / "running"
    result = await client.asend_task("proc.slow", [30, str(marker)])
    await wait_for_file(marker, worker)
    worker.signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    worker.signal(signal.SIGTERM)
    started = time.monotonic()
    await asyncio.to_thread(worker.wait, 10)
    assert time.monotonic() - started < 5
    transport = await client.atransport()
    assert (await transport.queue_stats("default")).ready == 1
    assert await result.astate() is State.STARTED


async def test_processes_pool_runs_tasks_and_kills_an_overrun(
    client: App, start: StartProcess
) -> None:
    worker = start("w", "-P", "processes", "-c", "2")
    await wait_consuming(client, "default")
    overrun = await client.asend_task("proc.overrun")
    cpu = await client.asend_task("proc.cpu", [1000])
    async_add = await client.asend_task("proc.async_add", [1, 2])
    assert await cpu.aget(timeout=20) == sum(i * i for i in range(1000))
    assert await async_add.aget(timeout=20) == 3
    with pytest.raises(TimeLimitExceeded):
        await overrun.aget(timeout=20)
    # the killed child was replaced: the pool still runs two tasks at once
    again = [await client.asend_task("proc.add", [i, 1]) for i in range(4)]
    assert [await r.aget(timeout=20) for r in again] == [1, 2, 3, 4]
    assert "processes" in worker.output()
