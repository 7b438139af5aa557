"""The sync API's private event loop: run in the calling thread, shared between threads, kept
running between calls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from conveyor import App
from conveyor.transports.base import Wakeup


@pytest.fixture
def app() -> Iterator[App]:
    made = App("sync-loop", broker="memory://sync-loop", result_backend="memory://sync-loop")
    yield made
    made.close()


async def _thread_name(pause: float = 0.0) -> str:
    await asyncio.sleep(pause)
    return threading.current_thread().name


def test_a_lone_call_runs_the_loop_in_the_calling_thread(app: App) -> None:
    assert app.run_sync(_thread_name()) == threading.current_thread().name
    with ThreadPoolExecutor(1, thread_name_prefix="caller") as pool:
        assert pool.submit(app.run_sync, _thread_name()).result(5).startswith("caller")


def test_calls_from_many_threads_share_the_loop_and_all_finish(app: App) -> None:
    def calls(k: int) -> list[int]:
        async def double(n: int) -> int:
            await asyncio.sleep(0.001 * (n % 3))
            return 2 * n

        return [app.run_sync(double(n)) for n in range(k * 100, k * 100 + 100)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(calls, range(8)))
    assert [n for part in results for n in part] == [2 * n for n in range(800)]


def test_a_call_made_while_another_runs_the_loop_is_not_held_up_by_it(app: App) -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="long") as pool:
        long = pool.submit(app.run_sync, _thread_name(1.0))
        time.sleep(0.2)  # the long call now runs the loop in its thread
        started = time.monotonic()
        assert app.run_sync(_thread_name()).startswith("long")  # handed to that thread
        assert time.monotonic() - started < 0.5
        assert long.result(5).startswith("long")


def test_the_loop_keeps_running_between_calls(app: App) -> None:
    fired = threading.Event()

    async def later() -> None:
        asyncio.get_running_loop().call_later(0.05, fired.set)

    app.run_sync(later())
    # No call runs the loop now: the background thread takes it over and runs the timer.
    assert fired.wait(2)


def test_a_wakeup_is_waited_for_by_running_the_loop(app: App) -> None:
    loop_holder: list[asyncio.AbstractEventLoop] = []

    async def remember() -> None:
        loop_holder.append(asyncio.get_running_loop())

    app.run_sync(remember())
    (loop,) = loop_holder
    wakeup = Wakeup()
    loop.call_soon_threadsafe(loop.call_later, 0.05, wakeup.set)
    assert app._wait_for(wakeup, 5)
    assert not app._wait_for(Wakeup(), 0.05)


def test_the_sync_api_refuses_to_be_called_from_its_own_loop(app: App) -> None:
    async def nested() -> None:
        app.run_sync(_thread_name())

    with pytest.raises(RuntimeError, match="its own event loop"):
        app.run_sync(nested())
