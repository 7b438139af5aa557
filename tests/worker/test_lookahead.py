"""The thread pools' look-ahead: tasks handed over beyond ``concurrency`` wait in the pool, and
what a user sees stays as before: at most ``concurrency`` running, time limits from the start
of the run, runtimes without the wait, and what has not started goes back when the worker
stops."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from conveyor.app import App
from conveyor.errors import TimeLimitExceeded
from conveyor.results import State
from conveyor.routing.entities import Queue
from conveyor.task import Request
from conveyor.worker import Middleware, Worker
from conveyor.worker.outcome import NotStarted, Outcome
from conveyor.worker.pools import AsyncioPool, ThreadPool
from tests.worker.conftest import StartWorker


class _Gauge:
    """Counts tasks running at once, from threads and coroutines alike."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@pytest.mark.parametrize("pool", ["asyncio", "threads"])
async def test_plain_and_async_tasks_together_never_run_more_than_concurrency(
    app: App, start_worker: StartWorker, pool: str
) -> None:
    gauge = _Gauge()

    @app.task(name="plain")
    def plain() -> None:
        gauge.enter()
        time.sleep(0.02)
        gauge.leave()

    @app.task(name="coro")
    async def coro() -> None:
        gauge.enter()
        await asyncio.sleep(0.02)
        gauge.leave()

    worker = await start_worker(concurrency=3, pool=pool)
    assert worker._free_slots == 6  # three running, three waiting in the pool
    results = [await (plain if n % 2 else coro).adelay() for n in range(24)]
    for result in results:
        await result.aget(timeout=10)
    assert gauge.peak == 3


async def test_a_time_limit_counts_from_the_start_of_the_run_not_the_wait(
    app: App, start_worker: StartWorker
) -> None:
    @app.task(name="long")
    def long() -> None:
        time.sleep(0.4)

    @app.task(name="quick", time_limit=0.25)
    def quick() -> str:
        time.sleep(0.05)
        return "done"

    @app.task(name="overrun", time_limit=0.25)
    def overrun() -> None:
        time.sleep(1.0)

    await start_worker(concurrency=1)
    first = await long.adelay()
    waiting = await quick.adelay()  # waits ~0.4 s for the thread, runs 0.05 s: within 0.25
    assert await waiting.aget(timeout=5) == "done"
    await first.aget(timeout=5)
    started = time.monotonic()
    failed = await overrun.adelay()
    with pytest.raises(TimeLimitExceeded, match=r"time limit of 0\.25"):
        await failed.aget(timeout=5)
    assert time.monotonic() - started < 0.9


async def test_runtime_is_the_run_without_the_wait(app: App, start_worker: StartWorker) -> None:
    outcomes: dict[str, Outcome] = {}

    class Record(Middleware):
        def after_task(self, worker: Worker, request: Request, outcome: Outcome) -> None:
            outcomes[request.task] = outcome

    @app.task(name="long")
    def long() -> None:
        time.sleep(0.3)

    @app.task(name="short")
    def short() -> None:
        time.sleep(0.01)

    @app.task(name="broken")
    def broken() -> None:
        raise ValueError("no")

    await start_worker(concurrency=1, middleware=[Record()])
    results = [await long.adelay(), await short.adelay()]
    for result in results:
        await result.aget(timeout=5)
    results = [await long.adelay(), await broken.adelay()]
    await results[0].aget(timeout=5)
    with pytest.raises(ValueError, match="no"):
        await results[1].aget(timeout=5)
    assert 0.25 < outcomes["long"].runtime < 1.0
    assert outcomes["short"].runtime < 0.2  # not the ~0.3 s it waited for the thread
    assert outcomes["broken"].state is State.FAILURE
    assert outcomes["broken"].runtime < 0.2


async def test_a_stopping_worker_gives_back_what_waits_in_the_pool(
    app: App, start_worker: StartWorker
) -> None:
    ran: list[str] = []

    @app.task(name="record")
    def record(label: str) -> None:
        time.sleep(0.3)
        ran.append(label)

    worker = await start_worker(concurrency=1)
    first = await record.adelay("first")
    second = await record.adelay("second")
    deadline = time.monotonic() + 5
    while worker._buffer or len(worker._running) < 2:  # both handed to the pool
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await worker.stop()
    assert await first.aget(timeout=5) is None
    assert ran == ["first"]
    transport = await app.atransport()
    assert (await transport.queue_stats(app.conf.task_default_queue)).ready == 1
    again = await start_worker(concurrency=1)
    assert await second.aget(timeout=5) is None
    assert ran == ["first", "second"]
    await again.stop()


async def test_a_task_acked_before_its_run_is_kept_and_runs_when_the_worker_stops(
    app: App, start_worker: StartWorker
) -> None:
    ran: list[str] = []

    @app.task(name="record", acks_late=False)
    def record(label: str) -> None:
        time.sleep(0.3)
        ran.append(label)

    worker = await start_worker(concurrency=1)
    for label in ("first", "second"):
        await record.adelay(label)
    deadline = time.monotonic() + 5
    while worker._buffer or len(worker._running) < 2:  # both acked and handed to the pool
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await worker.stop()
    assert ran == ["first", "second"]  # its message is gone: giving it back would lose it
    transport = await app.atransport()
    assert (await transport.queue_stats(app.conf.task_default_queue)).ready == 0


async def test_no_look_ahead_on_priority_queues_or_with_started_tracking(
    app: App, start_worker: StartWorker
) -> None:
    app.conf.task_queues = [Queue("ranked", max_priority=9), Queue("plain")]
    assert (await start_worker(queues=["plain"], concurrency=2))._free_slots == 4
    assert (await start_worker(queues=["ranked", "plain"], concurrency=2))._free_slots == 2
    app.conf.task_track_started = True
    assert (await start_worker(queues=["plain"], concurrency=2))._free_slots == 2


@pytest.mark.parametrize("pool_class", [AsyncioPool, ThreadPool])
async def test_withdrawn_runs_raise_not_started_and_running_ones_finish(
    app: App, pool_class: type[AsyncioPool]
) -> None:
    release = threading.Event()

    @app.task(name="hold")
    def hold() -> str:
        release.wait(5)
        return "held"

    @app.task(name="coro")
    async def coro() -> str:
        return "coro"

    pool = pool_class(1)
    await pool.start()
    request = Request(id="1", task="hold")
    running = asyncio.ensure_future(pool.run(hold, request, None))
    await asyncio.sleep(0.1)
    waiting = [
        asyncio.ensure_future(pool.run(hold, request, None)),
        asyncio.ensure_future(pool.run(coro, request, None)),
    ]
    await asyncio.sleep(0.05)
    assert pool.withdraw_waiting() == 2
    release.set()
    assert (await running).value == "held"
    for run in waiting:
        with pytest.raises(NotStarted):
            await run
    assert (await pool.run(hold, request, None)).value == "held"  # its permit came back
    await pool.close()
