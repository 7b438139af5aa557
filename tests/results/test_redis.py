"""The Redis result backend beyond the shared contract: Celery's layout both ways, expiry, many
waiters on one result, waiting without polling, and a killed connection."""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from conveyor.errors import ConfigurationError, ResultTimeout
from conveyor.results import ResultMeta, State, StoreRequest, open_backend
from conveyor.results.redis import RedisBackend
from tests.conftest import kill_redis_clients, redis_namespace
from tests.results.helpers import NoBrokerHost


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    return redis_namespace(request)


@pytest.fixture
async def backends(url: str) -> AsyncIterator[list[RedisBackend]]:
    made: list[RedisBackend] = []
    yield made
    for backend in reversed(made):
        await backend.close()


async def _open(url: str, made: list[RedisBackend], **settings: Any) -> RedisBackend:
    backend = open_backend(url, host=NoBrokerHost(**settings))
    assert isinstance(backend, RedisBackend)
    await backend.connect()
    made.append(backend)
    return backend


def _prefix(url: str) -> str:
    return url.split("key_prefix=", 1)[1]


def ok(task_id: str, value: object) -> StoreRequest:
    return StoreRequest(ResultMeta.success(task_id, value, worker="w@h", task="t"))


def test_unknown_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="poll"):
        open_backend("redis://127.0.0.1:6379/0?poll=1", host=NoBrokerHost())


def test_url_options_are_typed_by_their_defaults() -> None:
    backend = open_backend(
        "redis://127.0.0.1:6379/0?key_prefix=p:&socket_timeout=2", host=NoBrokerHost()
    )
    assert isinstance(backend, RedisBackend)
    with pytest.raises(ConfigurationError, match="socket_timeout"):
        open_backend("redis://127.0.0.1:6379/0?socket_timeout=soon", host=NoBrokerHost())


async def test_results_expire_after_result_expires(
    url: str, backends: list[RedisBackend], sync_redis: redis.Redis
) -> None:
    backend = await _open(url, backends, result_expires=30)
    await backend.store(ok("short", 1))
    ttl = sync_redis.pttl(f"{_prefix(url)}celery-task-meta-short")
    assert 25_000 < ttl <= 30_000
    forever = await _open(url, backends, result_expires=None)
    await forever.store(ok("kept", 1))
    assert sync_redis.pttl(f"{_prefix(url)}celery-task-meta-kept") == -1


async def test_celery_reads_conveyor_results_and_conveyor_reads_celery_results(
    url: str, redis_url: str, backends: list[RedisBackend]
) -> None:
    from celery import Celery

    celery = Celery(broker="memory://", backend=redis_url)
    celery.conf.result_backend_transport_options = {"global_keyprefix": _prefix(url)}
    celery.conf.accept_content = ["json"]
    celery.conf.result_accept_content = ["json"]
    backend = await _open(url, backends)

    ours = str(uuid.uuid4())
    await backend.store(ok(ours, {"from": "conveyor"}))
    assert celery.AsyncResult(ours).get(timeout=5) == {"from": "conveyor"}

    theirs = str(uuid.uuid4())
    waiting = asyncio.create_task(backend.wait(theirs, timeout=10))
    await asyncio.sleep(0.05)
    with warnings.catch_warnings():
        # Celery's Redis backend still calls redis-py's deprecated setex.
        warnings.simplefilter("ignore", DeprecationWarning)
        celery.backend.store_result(theirs, [1, 2], "SUCCESS")
    meta = await waiting
    assert (meta.state, meta.result) == (State.SUCCESS, [1, 2])
    celery.backend.client.close()


async def test_many_callers_waiting_on_one_result_all_get_it(
    url: str, backends: list[RedisBackend]
) -> None:
    first, second, writer = [await _open(url, backends) for _ in range(3)]
    waits = [
        asyncio.create_task(b.wait("shared", timeout=10))
        for b in (first, second)
        for _ in range(25)
    ]
    await asyncio.sleep(0.1)
    await writer.store(ok("shared", "everyone"))
    assert {(await w).result for w in waits} == {"everyone"}


async def test_a_waiter_sleeps_until_redis_publishes(
    url: str, backends: list[RedisBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, writer = await _open(url, backends), await _open(url, backends)
    await writer.store(ok("before", "stored first"))
    assert (await reader.wait("before", timeout=5)).result == "stored first"
    reads: list[str] = []
    real_read = reader._read

    async def counted(task_id: str) -> dict[str, ResultMeta]:
        reads.append(task_id)
        return await real_read(task_id)

    monkeypatch.setattr(reader, "_read", counted)
    await writer.store(ok("again", "stored before the wait"))
    # With the subscriber connection up, subscribing and reading are one round trip on it.
    assert (await reader.wait("again", timeout=5)).result == "stored before the wait"
    waiting = asyncio.create_task(reader.wait("later", timeout=10))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await writer.store(StoreRequest(ResultMeta("later", State.STARTED, worker="w@h")))
    await writer.store(ok("later", "done"))
    assert (await waiting).result == "done"
    assert reads == [], "the waiter read the store instead of being woken by Redis"


async def test_a_result_stored_while_the_waiter_subscribes_is_never_missed(
    url: str, backends: list[RedisBackend]
) -> None:
    reader, writer = await _open(url, backends), await _open(url, backends)
    for i in range(150):
        waiting = asyncio.create_task(reader.wait(f"race-{i}", timeout=5))
        await asyncio.sleep(0.0005 * (i % 4))
        await writer.store(ok(f"race-{i}", i))
        assert (await waiting).result == i


async def test_the_caller_hears_results_on_its_reply_channel(
    url: str, backends: list[RedisBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    caller, worker = await _open(url, backends), await _open(url, backends)
    reply_to = await caller.prepare_reply()
    assert reply_to == await caller.prepare_reply()

    async def never(task_id: str, timeout: float | None) -> ResultMeta:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    monkeypatch.setattr(caller, "_wait_subscribed", never)
    waiting = asyncio.create_task(caller.wait("mine", timeout=5))
    await asyncio.sleep(0.05)
    meta = ResultMeta.success("mine", "over the reply channel", worker="w@h", task="t")
    await worker.store(StoreRequest(meta, reply_to=reply_to))
    assert (await asyncio.wait_for(waiting, 5)).result == "over the reply channel"
    early = ResultMeta.success("early", "kept until asked", worker="w@h", task="t")
    await worker.store(StoreRequest(early, reply_to=reply_to))
    await asyncio.sleep(0.1)
    peeked = caller.peek("early")
    assert peeked is not None
    assert peeked.result == "kept until asked"
    assert (await caller.wait("early", timeout=1)).result == "kept until asked"
    # Someone else's reply_to (an rpc:// queue, a Celery client's id) is not published to.
    other = ResultMeta.success("theirs", 1, worker="w@h", task="t")
    await worker.store(StoreRequest(other, reply_to="conveyor.reply.1234"))
    monkeypatch.undo()
    assert (await caller.wait("theirs", timeout=1)).result == 1


async def test_a_thread_hears_an_announced_result_and_gives_up_soon_on_others(
    url: str, backends: list[RedisBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    caller, worker = await _open(url, backends), await _open(url, backends)
    # Before the caller announced a reply channel, nothing can come unasked.
    assert await asyncio.to_thread(caller.wait_from_thread, "any", 5) is None
    reply_to = await caller.prepare_reply()
    monkeypatch.setattr("conveyor.results.redis._REPLY_GRACE", 5.0)
    # Announced on the reply channel while the thread waits: it wakes with the result.
    waiting = asyncio.ensure_future(asyncio.to_thread(caller.wait_from_thread, "mine", 10))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    meta = ResultMeta.success("mine", "heard", worker="w@h", task="t")
    await worker.store(StoreRequest(meta, reply_to=reply_to))
    heard = await asyncio.wait_for(waiting, 5)
    assert heard is not None
    assert heard.result == "heard"
    assert caller.peek("mine") is None  # handed over, not kept twice
    # Stored without an announcement (a Celery worker's way): the thread gives up after the
    # grace, and the subscribed wait finds it.
    monkeypatch.setattr("conveyor.results.redis._REPLY_GRACE", 0.05)
    await worker.store(ok("theirs", "stored only"))
    assert await asyncio.to_thread(caller.wait_from_thread, "theirs", 10) is None
    assert (await caller.wait("theirs", timeout=5)).result == "stored only"


async def test_close_wakes_waiters_with_result_timeout(
    url: str, backends: list[RedisBackend]
) -> None:
    backend = await _open(url, backends)
    waiting = asyncio.create_task(backend.wait("never", timeout=None))
    await asyncio.sleep(0.05)
    await backend.close()
    with pytest.raises(ResultTimeout, match="closed"):
        await asyncio.wait_for(waiting, 5)


async def test_a_waiter_survives_client_kill(
    url: str, backends: list[RedisBackend], sync_redis: redis.Redis
) -> None:
    name = f"conveyor-kill-{uuid.uuid4().hex[:8]}"
    reader = await _open(f"{url}&client_name={name}", backends)
    writer = await _open(url, backends)
    waiting = asyncio.create_task(reader.wait("k", timeout=20))
    await asyncio.sleep(0.1)
    assert kill_redis_clients(sync_redis, name)
    await asyncio.sleep(0.1)
    await writer.store(ok("k", "after the kill"))
    assert (await asyncio.wait_for(waiting, 15)).result == "after the kill"
    assert (await reader.get("k")) is not None
