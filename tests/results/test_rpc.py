"""rpc://: replies go to the caller's own reply queue and find their AsyncResult by
correlation id, in any order; the reply queue goes away with the caller."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from conveyor.app import App
from conveyor.errors import NotFound, ResultTimeout
from conveyor.results import ResultMeta, State, StoreRequest
from conveyor.results.rpc import RPCBackend


@pytest.fixture
async def apps() -> AsyncIterator[tuple[App, App]]:
    broker = f"memory://rpc-{uuid.uuid4().hex}"
    caller = App("caller", broker=broker, result_backend="rpc://")
    worker = App("worker", broker=broker, result_backend="rpc://")
    yield caller, worker
    await caller.aclose()
    await worker.aclose()


def reply(task_id: str, value: object, reply_to: str, worker: str = "w@h") -> StoreRequest:
    meta = ResultMeta.success(task_id, value, worker=worker, task="t")
    return StoreRequest(meta, reply_to=reply_to, correlation_id=task_id)


async def test_replies_read_out_of_order_all_arrive(apps: tuple[App, App]) -> None:
    caller, worker = apps
    mine, theirs = await caller.abackend(), await worker.abackend()
    reply_to = await mine.prepare_reply()
    assert reply_to is not None
    ids = [f"id-{i}" for i in range(10)]
    for task_id in ids:
        await theirs.store(reply(task_id, task_id.upper(), reply_to))
    # read backwards, then one that arrives after its reader started waiting
    for task_id in reversed(ids):
        assert (await mine.wait(task_id, timeout=5)).result == task_id.upper()
    waiting = asyncio.create_task(mine.wait("late", timeout=5))
    await asyncio.sleep(0.02)
    await theirs.store(reply("late", "L", reply_to))
    assert (await waiting).result == "L"


async def test_broadcast_replies_are_kept_per_worker(apps: tuple[App, App]) -> None:
    caller, worker = apps
    mine, theirs = await caller.abackend(), await worker.abackend()
    reply_to = await mine.prepare_reply()
    assert reply_to is not None
    for host in ("a@h", "b@h"):
        meta = ResultMeta.success("b", host, worker=host, task="ping")
        await theirs.store(StoreRequest(meta, reply_to=reply_to, per_worker=True))
    got = await mine.collect("b", timeout=5, expected=2)
    assert {w: m.result for w, m in got.items()} == {"a@h": "a@h", "b@h": "b@h"}


async def test_wait_times_out_and_reply_queue_goes_with_the_caller(
    apps: tuple[App, App],
) -> None:
    caller, worker = apps
    mine = await caller.abackend()
    assert isinstance(mine, RPCBackend)
    reply_to = await mine.prepare_reply()
    assert reply_to is not None
    with pytest.raises(ResultTimeout, match="rpc://"):
        await mine.wait("never", timeout=0.05)
    await caller.aclose()
    transport = await worker.atransport()
    with pytest.raises(NotFound):
        await transport.queue_stats(reply_to)


async def test_peek_answers_from_replies_already_here_from_any_thread(
    apps: tuple[App, App],
) -> None:
    caller, worker = apps
    mine, theirs = await caller.abackend(), await worker.abackend()
    reply_to = await mine.prepare_reply()
    assert reply_to is not None
    assert await asyncio.to_thread(mine.peek, "p") is None
    started = ResultMeta("p", State.STARTED, worker="w@h")
    await theirs.store(StoreRequest(started, reply_to=reply_to, correlation_id="p"))
    await theirs.store(reply("p", "done", reply_to))
    deadline = asyncio.get_running_loop().time() + 5
    while (peeked := await asyncio.to_thread(mine.peek, "p")) is None:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert (peeked.state, peeked.result) == (State.SUCCESS, "done")
    # The AsyncResult that peeked keeps the value; the backend does not hold it twice.
    assert await mine.get("p") is None


async def test_a_thread_waits_for_a_reply_without_the_event_loop(apps: tuple[App, App]) -> None:
    caller, worker = apps
    mine, theirs = await caller.abackend(), await worker.abackend()
    reply_to = await mine.prepare_reply()
    assert reply_to is not None
    # The reply lands while the thread is already blocked in wait_from_thread.
    waiting = asyncio.ensure_future(asyncio.to_thread(mine.wait_from_thread, "w", 5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await theirs.store(reply("w", "woken", reply_to))
    meta = await asyncio.wait_for(waiting, 5)
    assert (meta.state, meta.result) == (State.SUCCESS, "woken")
    # A reply that arrived before anyone asked is there too; none in time is a ResultTimeout.
    await theirs.store(reply("early", 3, reply_to))
    await asyncio.sleep(0.05)
    assert (await asyncio.to_thread(mine.wait_from_thread, "early", 5)).result == 3
    with pytest.raises(ResultTimeout, match="never"):
        await asyncio.to_thread(mine.wait_from_thread, "never", 0.05)


async def test_closing_the_backend_wakes_a_waiting_thread(apps: tuple[App, App]) -> None:
    caller, _ = apps
    mine = await caller.abackend()
    await mine.prepare_reply()
    waiting = asyncio.ensure_future(asyncio.to_thread(mine.wait_from_thread, "w", None))
    await asyncio.sleep(0.05)
    await mine.close()
    with pytest.raises(ResultTimeout, match="no reply"):
        await asyncio.wait_for(waiting, 5)
