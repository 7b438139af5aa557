"""The ResultBackend contract, on every backend."""

from __future__ import annotations

import asyncio
import time

import pytest

from conveyor.errors import ProtocolError, ResultTimeout
from conveyor.results import ResultMeta, State, StoreRequest
from tests.results.conftest import MakeBackend


def ok(task_id: str, value: object, worker: str = "w1") -> StoreRequest:
    return StoreRequest(ResultMeta.success(task_id, value, worker=worker, task="t"))


async def test_unknown_id_is_pending_and_wait_times_out(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    assert await backend.get("nope") is None
    with pytest.raises(ResultTimeout, match="nope"):
        await backend.wait("nope", timeout=0.05)


async def test_peek_shows_only_a_ready_result_and_works_from_any_thread(
    make_backend: MakeBackend,
) -> None:
    backend = await make_backend()
    assert await asyncio.to_thread(backend.peek, "p") is None
    await backend.store(StoreRequest(ResultMeta("p", State.STARTED, worker="w1")))
    assert await asyncio.to_thread(backend.peek, "p") is None
    await backend.store(ok("p", 7))
    peeked = await asyncio.to_thread(backend.peek, "p")
    # None is allowed (a backend holding nothing locally), a wrong or unready result is not.
    assert peeked is None or (peeked.state, peeked.result) == (State.SUCCESS, 7)


async def test_store_then_get_and_wait(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    await backend.store(StoreRequest(ResultMeta("a", State.STARTED, worker="w1")))
    meta = await backend.get("a")
    assert meta is not None
    assert meta.state is State.STARTED
    await backend.store(ok("a", {"n": [1, 2]}))
    meta = await backend.wait("a", timeout=1)
    assert (meta.state, meta.result, meta.worker) == (State.SUCCESS, {"n": [1, 2]}, "w1")


async def test_a_waiter_is_woken_by_a_store_from_another_instance(
    make_backend: MakeBackend,
) -> None:
    reader, writer = await make_backend(), await make_backend()
    waiting = asyncio.create_task(reader.wait("x", timeout=10))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await writer.store(ok("x", 42))
    meta = await waiting
    assert meta.result == 42
    assert time.monotonic() - started < 2.0


async def test_results_read_out_of_order_are_all_delivered(make_backend: MakeBackend) -> None:
    reader, writer = await make_backend(), await make_backend()
    ids = [f"t{i}" for i in range(20)]
    waits = {tid: asyncio.create_task(reader.wait(tid, timeout=10)) for tid in ids}
    await asyncio.sleep(0.05)
    await asyncio.gather(*(writer.store(ok(tid, tid)) for tid in reversed(ids)))
    for tid in ids:
        assert (await waits[tid]).result == tid


async def test_per_worker_results_never_overwrite_each_other(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    collecting = asyncio.create_task(backend.collect("b", timeout=10, expected=2))
    for worker in ("web@h", "remote@h"):
        meta = ResultMeta.success("b", f"pong from {worker}", worker=worker, task="ping")
        await backend.store(StoreRequest(meta, per_worker=True))
    replies = await collecting
    assert {w: m.result for w, m in replies.items()} == {
        "web@h": "pong from web@h",
        "remote@h": "pong from remote@h",
    }
    first = await backend.wait("b", timeout=1)
    assert first.worker in replies


async def test_collect_returns_what_arrived_at_timeout(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    meta = ResultMeta.success("c", 1, worker="only@h", task="ping")
    await backend.store(StoreRequest(meta, per_worker=True))
    started = time.monotonic()
    replies = await backend.collect("c", timeout=0.2, expected=2)
    assert list(replies) == ["only@h"]
    assert time.monotonic() - started >= 0.2


async def test_forget_and_cleanup(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    await backend.store(ok("f", 1))
    await backend.forget("f")
    assert await backend.get("f") is None
    old = ResultMeta("old", State.SUCCESS, 1, date_done=time.time() - 1000)
    await backend.store(StoreRequest(old))
    await backend.store(ok("new", 2))
    assert await backend.cleanup(older_than=time.time() - 500) == 1
    assert await backend.get("old") is None
    assert await backend.get("new") is not None


async def test_a_value_json_cannot_hold_is_refused(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    with pytest.raises(ProtocolError, match="cannot be stored as JSON"):
        await backend.store(ok("bad", object()))
