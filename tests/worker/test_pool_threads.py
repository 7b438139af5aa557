"""The asyncio pool's plain-function path: a quick call is waited for in the same loop turn
(bounded), a slow one is heard of through the loop; both give the same outcomes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import pytest

from conveyor.app import App
from conveyor.results import State
from conveyor.task import Request
from conveyor.worker import execution
from conveyor.worker.execution import LINGER, AsyncioPool


@pytest.fixture
async def pool() -> AsyncIterator[AsyncioPool]:
    pool = AsyncioPool(4)
    await pool.start()
    yield pool
    await pool.close()


def request(name: str, *args: object) -> Request:
    return Request(id=f"id-{name}", task=name, args=args, kwargs={})


@pytest.fixture
def lingered(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each thread call was finished while the loop waited for it."""
    seen: list[bool] = []
    original = execution._Job.linger

    def linger(job: execution._Job, seconds: float) -> bool:
        kept = original(job, seconds)
        seen.append(kept)
        return kept

    monkeypatch.setattr(execution._Job, "linger", linger)
    return seen


async def test_a_quick_call_finishes_in_the_same_turn(
    pool: AsyncioPool, lingered: list[bool]
) -> None:
    app = App("p", broker="memory://pool-quick")

    @app.task(name="quick")
    def quick(x: int) -> int:
        return x * 2

    @app.task(name="quick_fail")
    def quick_fail() -> None:
        raise KeyError("missing")

    for n in range(5):
        outcome = await pool.run(quick, request("quick", n), None)
        assert (outcome.state, outcome.value) == (State.SUCCESS, n * 2)
    failed = await pool.run(quick_fail, request("quick_fail"), None)
    assert failed.state is State.FAILURE
    assert isinstance(failed.error, KeyError)
    assert failed.traceback is not None
    assert "quick_fail" in failed.traceback
    assert lingered
    assert all(lingered)


async def test_a_slow_call_is_heard_of_through_the_loop(
    pool: AsyncioPool, lingered: list[bool]
) -> None:
    app = App("p", broker="memory://pool-slow")

    @app.task(name="slow")
    def slow() -> str:
        time.sleep(LINGER * 20)
        return "done"

    first = await pool.run(slow, request("slow"), None)
    assert (first.state, first.value) == (State.SUCCESS, "done")
    assert lingered == [False]  # the wait gave up; the result still came
    second = await pool.run(slow, request("slow"), None)
    assert (second.state, second.value) == (State.SUCCESS, "done")
    assert lingered == [False]  # known to be slow: the loop no longer waits for it


async def test_the_loop_never_waits_while_other_runs_are_in_hand(
    pool: AsyncioPool, lingered: list[bool]
) -> None:
    app = App("p", broker="memory://pool-busy")
    gate = threading.Event()

    @app.task(name="held")
    def held() -> str:
        gate.wait(5)
        return "released"

    @app.task(name="quick")
    def quick() -> str:
        return "quick"

    holding = asyncio.ensure_future(pool.run(held, request("held"), None))
    await asyncio.sleep(0.05)
    lingered.clear()
    assert (await pool.run(quick, request("quick"), None)).value == "quick"
    assert lingered == []
    gate.set()
    assert (await holding).value == "released"


async def test_a_time_limit_shorter_than_the_wait_still_holds(pool: AsyncioPool) -> None:
    app = App("p", broker="memory://pool-limit")

    @app.task(name="overrun")
    def overrun() -> None:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            pass

    outcome = await pool.run(overrun, request("overrun"), 0.0002)
    assert outcome.state is State.FAILURE
    assert "time limit" in str(outcome.error)
