"""The chord join contract (ResultBackend.chord_part_done) on every backend that joins."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.results.base import ChordPart, ResultBackend
from tests.conftest import postgres_namespace, redis_namespace


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResultBackend]:
    if request.param == "memory":
        url = f"memory://join-{uuid.uuid4().hex}"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.db'}"
    elif request.param == "redis":
        url = redis_namespace(request)
    else:
        url = postgres_namespace(request)
    app = App("joins", broker="memory://", result_backend=url)
    yield await app.abackend()
    await app.aclose()


def part(gid: str, index: int, value: object = None, state: str = "SUCCESS") -> ChordPart:
    return ChordPart(gid, f"{gid}-task-{index}", index, state, value)


async def test_the_part_that_completes_the_count_gets_the_join_in_header_order(
    backend: ResultBackend,
) -> None:
    gid = uuid.uuid4().hex
    await backend.chord_start(gid, 3)
    assert await backend.chord_part_done(part(gid, 2, "c")) is None
    assert await backend.chord_part_done(part(gid, 0, "a")) is None
    join = await backend.chord_part_done(part(gid, 1, "b"))
    assert join is not None
    assert [p.result for p in join.parts] == ["a", "b", "c"]
    assert [p.task_id for p in join.parts] == [f"{gid}-task-{i}" for i in range(3)]


async def test_a_redelivered_part_counts_once(backend: ResultBackend) -> None:
    gid = uuid.uuid4().hex
    await backend.chord_start(gid, 2)
    assert await backend.chord_part_done(part(gid, 0, "first run")) is None
    assert await backend.chord_part_done(part(gid, 0, "second run")) is None
    join = await backend.chord_part_done(part(gid, 1, "b"))
    assert join is not None
    assert [p.result for p in join.parts] == ["first run", "b"]


async def test_one_claim_at_a_time_then_done_ignores_late_parts(backend: ResultBackend) -> None:
    gid = uuid.uuid4().hex
    await backend.chord_start(gid, 1)
    racers = await asyncio.gather(*(backend.chord_part_done(part(gid, 0, i)) for i in range(5)))
    joins = [j for j in racers if j is not None]
    assert len(joins) == 1
    assert await backend.chord_done(gid, joins[0].claim)
    assert await backend.chord_part_done(part(gid, 0, "late")) is None
    assert not await backend.chord_done(gid, joins[0].claim)


async def test_a_lapsed_claim_is_taken_by_the_next_report(backend: ResultBackend) -> None:
    gid = uuid.uuid4().hex
    await backend.chord_start(gid, 1)
    first = await backend.chord_part_done(part(gid, 0, "x"), claim_seconds=1)
    assert first is not None
    assert await backend.chord_part_done(part(gid, 0, "x"), claim_seconds=1) is None
    await asyncio.sleep(1.3)
    second = await backend.chord_part_done(part(gid, 0, "x"), claim_seconds=1)
    assert second is not None
    assert second.claim != first.claim
    assert not await backend.chord_done(gid, first.claim)
    assert await backend.chord_done(gid, second.claim)


async def test_rpc_refuses_a_chord_at_send_time(rabbitmq_url: str) -> None:
    from conveyor.canvas import chord

    app = App("rpc-chord", broker=rabbitmq_url, result_backend="rpc://")
    try:
        workflow = chord([app.signature("wf.add", (1, 1))], app.signature("wf.tsum"))
        with pytest.raises(ConfigurationError, match=r"chord needs a result backend.*rpc://"):
            await workflow.aapply_async()
    finally:
        await app.aclose()


async def test_sqlite_cleanup_forgets_old_chord_joins(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    app = App("joins", broker="memory://", result_backend=url)
    backend = await app.abackend()
    try:
        gid = uuid.uuid4().hex
        await backend.chord_start(gid, 2)
        assert await backend.chord_part_done(part(gid, 0, "a")) is None
        await backend.cleanup(older_than=time.time() + 1)
        # forgotten: the size is gone, so the join never completes
        assert await backend.chord_part_done(part(gid, 1, "b")) is None
    finally:
        await app.aclose()
