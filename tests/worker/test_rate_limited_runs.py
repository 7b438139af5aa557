"""Rate limits on a worker: runs of a task spaced per worker, without blocking other tasks,
a bad rate refused up front, and runs waiting for their turn given back when it stops."""

from __future__ import annotations

import asyncio
import time

import pytest

from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.worker import Worker
from tests.worker.conftest import StartWorker


def test_a_bad_rate_on_a_task_names_the_task(app: App) -> None:
    with pytest.raises(ConfigurationError, match=r"^task 'rl\.bad': rate limit '3/week'"):
        app.task(name="rl.bad", rate_limit="3/week")(lambda: None)


def test_a_bad_default_rate_fails_when_the_worker_is_made(app: App) -> None:
    app.conf.task_default_rate_limit = "fast"
    with pytest.raises(ConfigurationError, match="rate limit 'fast' is not a rate"):
        Worker(app)


async def test_runs_are_spaced_by_the_rate(app: App, start_worker: StartWorker) -> None:
    starts: list[float] = []

    @app.task(name="rl.tick", rate_limit="20/s")
    async def tick() -> None:
        starts.append(time.monotonic())

    await start_worker(concurrency=4)
    results = [await tick.adelay() for _ in range(5)]
    for result in results:
        await result.aget(timeout=10)
    assert len(starts) == 5
    # Run k starts k/20 s after the first at the earliest (a timer may fire a tick early).
    since_first = [start - starts[0] for start in starts]
    assert all(since_first[k] >= k / 20 - 0.005 for k in range(5)), since_first


async def test_a_waiting_run_does_not_block_other_tasks(
    app: App, start_worker: StartWorker
) -> None:
    events: list[str] = []

    @app.task(name="rl.slow", rate_limit="2/s")
    async def limited(n: int) -> None:
        events.append(f"limited {n}")

    @app.task(name="rl.free")
    async def free() -> None:
        events.append("free")

    await start_worker(concurrency=1)
    sent = [await limited.adelay(n) for n in range(3)]
    await (await free.adelay()).aget(timeout=10)
    for result in sent:
        await result.aget(timeout=10)
    # limited 0 starts at once, 1 after 0.5 s, 2 after 1 s; free went while they waited.
    assert events.index("free") < events.index("limited 2")
    assert sorted(events) == ["free", "limited 0", "limited 1", "limited 2"]


async def test_runs_waiting_for_their_turn_go_back_when_the_worker_stops(
    app: App, start_worker: StartWorker
) -> None:
    ran: list[int] = []

    @app.task(name="rl.rare", rate_limit="1/h")
    async def rare(n: int) -> None:
        ran.append(n)

    worker = await start_worker(concurrency=2)
    first = await rare.adelay(0)
    for n in (1, 2):
        await rare.adelay(n)
    await first.aget(timeout=10)
    await asyncio.sleep(0.1)
    await worker.stop()
    assert ran == [0]
    checker = App("checker", broker=app.conf.broker_url)
    transport = await checker.atransport()
    try:
        assert (await transport.queue_stats("celery")).ready == 2
    finally:
        await checker.aclose()
