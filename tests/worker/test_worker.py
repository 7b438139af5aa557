"""The worker end to end in one process, on memory:// (fast): run, results, errors, retries,
expiry, time limits, dead-lettering, priorities, broadcast and removing expired results."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from conveyor.app import App
from conveyor.errors import (
    NotFound,
    RemoteTaskError,
    ResultTimeout,
    TaskRevoked,
    TimeLimitExceeded,
)
from conveyor.results import State
from conveyor.routing.entities import Broadcast, Exchange, Queue
from conveyor.task import Task
from conveyor.worker import DEAD_LETTER_HEADERS
from tests.worker.conftest import StartWorker


async def test_async_and_plain_tasks_return_results(app: App, start_worker: StartWorker) -> None:
    @app.task(name="math.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="math.mul")
    async def mul(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x * y

    await start_worker()
    r1 = await add.adelay(2, 3)
    r2 = await mul.aapply_async((4, 5))
    assert await r1.aget(timeout=5) == 5
    assert await r2.aget(timeout=5) == 20
    assert await r1.astate() is State.SUCCESS


async def test_send_task_by_name_from_an_app_without_the_code(
    app: App, memory_url: str, start_worker: StartWorker
) -> None:
    @app.task(name="remote.transcode")
    def transcode(path: str) -> str:
        return f"transcoded {path}"

    await start_worker()
    client = App("client", broker=memory_url, result_backend=memory_url)
    try:
        result = await client.asend_task("remote.transcode", kwargs={"path": "a.mp4"})
        assert await result.aget(timeout=5) == "transcoded a.mp4"
        assert "remote.transcode" not in client.tasks
    finally:
        await client.aclose()


async def test_failure_raises_the_task_error_with_its_traceback(
    app: App, start_worker: StartWorker
) -> None:
    @app.task(name="fail")
    def fail(n: int) -> None:
        raise ValueError(f"bad {n}")

    await start_worker()
    result = await fail.adelay(7)
    with pytest.raises(ValueError, match="bad 7") as info:
        await result.aget(timeout=5)
    assert "raise ValueError" in info.value.remote_traceback  # type: ignore[attr-defined]
    error = await result.aget(timeout=5, propagate=False)
    assert isinstance(error, ValueError)
    assert await result.astate() is State.FAILURE


async def test_unimportable_error_type_becomes_remote_task_error(
    app: App, start_worker: StartWorker
) -> None:
    @app.task(name="weird")
    def weird() -> None:
        class Local(Exception):
            pass

        raise Local("x")

    await start_worker()
    with pytest.raises(RemoteTaskError, match="Local"):
        await (await weird.adelay()).aget(timeout=5)


async def test_bound_task_retries_then_succeeds(app: App, start_worker: StartWorker) -> None:
    @app.task(name="flaky", bind=True, max_retries=3)
    def flaky(self: Task, need: int) -> int:
        if self.request.retries < need:
            raise self.retry(countdown=0.01)
        return self.request.retries

    await start_worker()
    assert await (await flaky.adelay(2)).aget(timeout=5) == 2


async def test_retries_stop_at_max_retries(app: App, start_worker: StartWorker) -> None:
    attempts: list[int] = []

    @app.task(name="auto", autoretry_for=(KeyError,), max_retries=2, default_retry_delay=0.01)
    def auto() -> None:
        attempts.append(1)
        raise KeyError("missing")

    await start_worker()
    with pytest.raises(KeyError):
        await (await auto.adelay()).aget(timeout=5)
    assert len(attempts) == 3


async def test_expired_task_is_not_run_and_is_revoked(app: App, start_worker: StartWorker) -> None:
    ran: list[int] = []

    @app.task(name="late")
    def late() -> None:
        ran.append(1)

    result = await late.aapply_async(expires=0.01)
    await asyncio.sleep(0.05)
    await start_worker()
    with pytest.raises(TaskRevoked, match="expired"):
        await result.aget(timeout=5)
    assert await result.astate() is State.REVOKED
    assert ran == []


@pytest.mark.parametrize("kind", ["async", "plain"])
async def test_time_limit_stops_an_overrunning_task(
    app: App, start_worker: StartWorker, kind: str
) -> None:
    finished: list[int] = []

    if kind == "async":

        @app.task(name="slow", time_limit=0.2)
        async def slow() -> None:
            await asyncio.sleep(5)
            finished.append(1)

    else:

        @app.task(name="slow", time_limit=0.2)
        def slow() -> None:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)
            finished.append(1)

    @app.task(name="after")
    def after() -> str:
        return "still serving"

    await start_worker(concurrency=1)
    started = time.monotonic()
    result = await app.asend_task("slow")
    with pytest.raises(TimeLimitExceeded, match=r"time limit of 0\.2"):
        await result.aget(timeout=5)
    assert time.monotonic() - started < 3
    assert await (await after.adelay()).aget(timeout=5) == "still serving"
    await asyncio.sleep(0.1)
    assert finished == []


async def test_countdown_delays_the_run(app: App, start_worker: StartWorker) -> None:
    @app.task(name="stamp")
    def stamp() -> float:
        return time.time()

    await start_worker()
    sent = time.time()
    result = await stamp.aapply_async(countdown=0.3)
    assert await result.aget(timeout=5) >= sent + 0.3


async def test_ignore_result_stores_nothing(app: App, start_worker: StartWorker) -> None:
    ran = threading.Event()

    @app.task(name="quiet", ignore_result=True)
    def quiet() -> int:
        ran.set()
        return 1

    await start_worker()
    result = await quiet.adelay()
    assert await asyncio.to_thread(ran.wait, 5)
    await asyncio.sleep(0.05)
    assert await result.astate() is State.PENDING
    with pytest.raises(ResultTimeout):
        await result.aget(timeout=0.1)


async def test_unknown_task_is_dead_lettered_not_dropped(
    app: App, start_worker: StartWorker
) -> None:
    worker = await start_worker(hostname="w1@%h")
    await app.asend_task("nobody.knows.me", args=[1])
    transport = await app.atransport()
    deadline = time.monotonic() + 5
    delivery = None
    while delivery is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        if (await transport.queue_stats("default")).ready == 0:
            with_dl = await transport.get("dead_letter")
            delivery = with_dl
    assert delivery is not None
    headers = delivery.envelope.headers
    assert headers["task"] == "nobody.knows.me"
    reason, who, queue = (headers[h] for h in DEAD_LETTER_HEADERS)
    assert "unknown task 'nobody.knows.me'" in reason
    assert (who, queue) == (worker.hostname, "default")


async def test_undecodable_message_is_dead_lettered_and_worker_keeps_running(
    app: App, start_worker: StartWorker
) -> None:
    from conveyor.protocol.envelope import Envelope

    @app.task(name="ok")
    def ok() -> str:
        return "ok"

    await start_worker()
    transport = await app.atransport()
    await transport.publish(
        Envelope(body=b"\x80garbage", headers={"task": "ok", "id": "x"}),
        exchange="",
        routing_key="default",
    )
    assert await (await ok.adelay()).aget(timeout=5) == "ok"
    deadline = time.monotonic() + 5
    while (await transport.queue_stats("dead_letter")).ready == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    dead = await transport.get("dead_letter")
    assert dead is not None
    assert "undecodable message" in dead.envelope.headers["x-conveyor-dead-letter-reason"]


async def test_queue_with_its_own_dead_letter_exchange_uses_it(
    memory_url: str, start_worker: StartWorker
) -> None:
    dlx = Exchange("jobs.dlx")
    app = App(
        broker=memory_url,
        result_backend=memory_url,
        config={
            "task_queues": [
                Queue("jobs", queue_arguments={"x-dead-letter-exchange": "jobs.dlx"}),
                Queue("jobs.dead", exchange=dlx, routing_key="jobs"),
            ],
            "task_default_queue": "jobs",
        },
    )
    try:
        transport = await app.atransport()
        await transport.declare_queue(Queue("jobs.dead", exchange=dlx, routing_key="jobs"))
        await start_worker(app)
        await app.asend_task("unknown.task")
        deadline = time.monotonic() + 5
        while (await transport.queue_stats("jobs.dead")).ready == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        with pytest.raises(NotFound):
            await transport.queue_stats("dead_letter")
    finally:
        await app.aclose()


async def test_priority_buffer_runs_a_later_high_priority_task_first(
    memory_url: str, start_worker: StartWorker
) -> None:
    app = App(
        broker=memory_url,
        result_backend=memory_url,
        config={"task_queues": [Queue("default", max_priority=10)]},
    )
    order: list[str] = []
    gate = asyncio.Event()
    blocking = asyncio.Event()

    @app.task(name="block")
    async def block() -> None:
        blocking.set()
        await gate.wait()

    @app.task(name="record")
    async def record(label: str) -> None:
        order.append(label)

    try:
        worker = await start_worker(app, concurrency=1, prefetch_multiplier=10)
        first = await block.adelay()
        await asyncio.wait_for(blocking.wait(), 5)
        lows = [await record.aapply_async(("low",), priority=1) for _ in range(5)]
        # wait until the consumer has prefetched the low ones into the local buffer
        deadline = time.monotonic() + 5
        while len(worker._buffer) < 5:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        high = await record.aapply_async(("high",), priority=9)
        while len(worker._buffer) < 6:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        gate.set()
        for r in [first, *lows, high]:
            await r.aget(timeout=5)
        assert order == ["high"] + ["low"] * 5
    finally:
        await app.aclose()


async def test_broadcast_runs_on_every_worker_and_collects_each_result(
    memory_url: str, start_worker: StartWorker
) -> None:
    app = App(
        broker=memory_url,
        result_backend=memory_url,
        config={"task_queues": [Queue("default"), Broadcast("everyone")]},
    )

    @app.task(name="ping", bind=True)
    def ping(self: Task) -> str:
        return f"pong from {self.request.hostname}"

    try:
        await start_worker(app, queues=["default", "everyone"], hostname="a@h")
        await start_worker(app, queues=["default", "everyone"], hostname="b@h")
        result = await app.asend_task("ping", queue="everyone")
        replies = await result.acollect(timeout=5, expected=2)
        assert replies == {"a@h": "pong from a@h", "b@h": "pong from b@h"}
    finally:
        await app.aclose()


async def test_sync_caller_in_another_thread(app: App, start_worker: StartWorker) -> None:
    @app.task(name="echo")
    def echo(value: Any) -> Any:
        return value

    await start_worker()

    def sync_client() -> Any:
        result = echo.delay({"a": [1, 2]})
        value = result.get(timeout=5)
        return value, result.state, result.successful()

    try:
        value, state, ok = await asyncio.to_thread(sync_client)
    finally:
        await asyncio.to_thread(app.close)
    assert value == {"a": [1, 2]}
    assert state is State.SUCCESS
    assert ok


async def test_rpc_results_through_a_worker_read_out_of_order(
    memory_url: str, start_worker: StartWorker
) -> None:
    app = App(broker=memory_url, result_backend="rpc://")

    @app.task(name="square")
    async def square(n: int) -> int:
        await asyncio.sleep(0.001 * (10 - n))
        return n * n

    try:
        await start_worker(app)
        results = [await square.adelay(n) for n in range(10)]
        for n, result in reversed(list(enumerate(results))):
            assert await result.aget(timeout=5) == n * n
    finally:
        await app.aclose()


async def test_early_ack_acks_before_the_task_runs(app: App, start_worker: StartWorker) -> None:
    running = asyncio.Event()
    release = asyncio.Event()

    @app.task(name="early", acks_late=False)
    async def early() -> None:
        running.set()
        await release.wait()

    @app.task(name="late_ack")
    async def late_ack() -> None:
        running.set()
        await release.wait()

    await start_worker(concurrency=1)
    transport = await app.atransport()
    for task, unacked in ((early, 0), (late_ack, 1)):
        running.clear()
        release.clear()
        result = await task.adelay()
        await asyncio.wait_for(running.wait(), 5)
        assert (await transport.queue_stats("default")).unacked == unacked
        release.set()
        await result.aget(timeout=5)


async def test_worker_stops_with_an_error_when_the_broker_goes_away(app: App) -> None:
    from conveyor.errors import BrokerUnavailable
    from conveyor.worker import Worker

    worker = Worker(app, concurrency=1)
    running = asyncio.create_task(worker.run())
    transport = await app.atransport()
    deadline = time.monotonic() + 5
    while not await _consumed(transport, "default"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await transport.close()
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(running, 5)


async def _consumed(transport: Any, queue: str) -> bool:
    try:
        return bool((await transport.queue_stats(queue)).consumers)
    except NotFound:
        return False


async def test_subtasks_carry_parent_and_root_ids_and_headers(
    app: App, start_worker: StartWorker
) -> None:
    @app.task(name="child", bind=True)
    def child(self: Task) -> dict[str, Any]:
        req = self.request
        return {"parent": req.parent_id, "root": req.root_id, "tenant": req.headers.get("tenant")}

    @app.task(name="parent", bind=True)
    async def parent(self: Task) -> dict[str, Any]:
        result = await child.aapply_async(headers={"tenant": "acme"})
        seen: dict[str, Any] = await result.aget(timeout=5)
        return {**seen, "me": self.request.id}

    await start_worker()
    got = await (await parent.adelay()).aget(timeout=10)
    assert got["parent"] == got["me"]
    assert got["root"] == got["me"]
    assert got["tenant"] == "acme"


async def test_a_result_json_cannot_hold_fails_the_task_clearly(
    app: App, start_worker: StartWorker
) -> None:
    from conveyor.errors import ProtocolError

    @app.task(name="opaque")
    def opaque() -> object:
        return object()

    await start_worker()
    with pytest.raises(ProtocolError, match="cannot be stored as JSON"):
        await (await opaque.adelay()).aget(timeout=5)


async def test_result_expires_removes_old_results(
    memory_url: str, start_worker: StartWorker
) -> None:
    app = App(broker=memory_url, result_backend=memory_url, config={"result_expires": 0.3})

    @app.task(name="short_lived")
    def short_lived() -> int:
        return 1

    try:
        await start_worker(app)
        result = await short_lived.adelay()
        assert await result.aget(timeout=5) == 1
        fresh = app.result(result.id)
        assert await fresh.astate() is State.SUCCESS
        deadline = time.monotonic() + 5
        while await app.result(result.id).astate() is not State.PENDING:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await app.aclose()
