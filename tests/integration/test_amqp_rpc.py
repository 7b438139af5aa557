"""rpc:// results over RabbitMQ's direct reply-to: no reply queue, replies straight back."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest

from conveyor import Envelope
from conveyor.app import App
from conveyor.errors import Unroutable
from conveyor.results import StoreRequest
from conveyor.results.rpc import RPCBackend
from conveyor.results.waiters import Waiters
from conveyor.task import Request
from conveyor.transports.amqp import DIRECT_REPLY_TO, AMQPTransport
from conveyor.transports.base import Published
from conveyor.worker import Worker
from tests.rabbitmqctl import close_connections_named, needs_rabbitmqctl


async def test_rpc_results_come_back_over_direct_reply_to(rabbitmq_url: str) -> None:
    queue = f"amqp-rpc.{uuid.uuid4().hex}"
    remote = App("remote", broker=rabbitmq_url, result_backend="rpc://")
    caller = App("web", broker=rabbitmq_url, result_backend="rpc://")

    @remote.task(name="remote.add")
    async def add(x: int, y: int) -> int:
        await asyncio.sleep(0.01 * (x % 3))
        return x + y

    worker = Worker(remote, queues=[queue], concurrency=8, shutdown_grace=5.0)
    await worker.start()
    try:
        results = [await caller.asend_task("remote.add", (i, 100), queue=queue) for i in range(30)]
        # Read in reverse: replies that arrive before anyone waits for them are kept.
        assert [await r.aget(timeout=10) for r in reversed(results)] == [
            i + 100 for i in reversed(range(30))
        ]
        backend = await caller.abackend()
        assert isinstance(backend, RPCBackend)
        assert await backend.prepare_reply() == DIRECT_REPLY_TO
        transport = await caller.atransport()
        assert isinstance(transport, AMQPTransport)
        declared = [key[1] for key in transport._session.topology if key[0] == "queue"]
        assert not [name for name in declared if name.startswith("conveyor.reply")]
    finally:
        await worker.stop()
        cleaner = await caller.atransport()
        await cleaner.delete_queue(queue)
        await cleaner.delete_exchange(queue)  # made with it by task_create_missing_queues
        await caller.aclose()
        await remote.aclose()


async def test_plain_function_results_go_out_from_the_pool_thread(
    rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = f"amqp-rpc-threads.{uuid.uuid4().hex}"
    remote = App("remote", broker=rabbitmq_url, result_backend="rpc://")
    caller = App("web", broker=rabbitmq_url, result_backend="rpc://")

    @remote.task(name="remote.square")
    def square(x: int) -> int:
        return x * x

    from_thread: list[bool] = []
    nine_sent = threading.Event()
    store_from_thread = RPCBackend.store_from_thread

    def counting(self: RPCBackend, request: StoreRequest) -> bool:
        sent = store_from_thread(self, request)
        from_thread.append(sent)
        if from_thread.count(True) >= 9:
            nine_sent.set()
        return sent

    monkeypatch.setattr(RPCBackend, "store_from_thread", counting)
    loop_stores: list[str] = []
    store = Worker._store

    async def counting_store(self: Worker, request: Request, *args: Any) -> None:
        loop_stores.append(request.id)
        await store(self, request, *args)

    monkeypatch.setattr(Worker, "_store", counting_store)
    worker = Worker(remote, queues=[queue], concurrency=8, shutdown_grace=5.0)
    await worker.start()
    try:
        # One at a time: the first reply goes through the loop (it opens the reply channel),
        # every later one from the thread that ran the task, and only from there.
        for i in range(10):
            result = await caller.asend_task("remote.square", (i,), queue=queue)
            assert await result.aget(timeout=10) == i * i
        # The caller can hear a reply before the thread that sent it records having sent it.
        assert await asyncio.to_thread(nine_sent.wait, 5)
        assert len(loop_stores) == 1
        assert from_thread.count(True) == 9
        # Many at once: threads and the loop (acks) write to one connection; nothing garbled.
        results = [await caller.asend_task("remote.square", (i,), queue=queue) for i in range(300)]
        assert [await r.aget(timeout=20) for r in results] == [i * i for i in range(300)]
        assert from_thread.count(True) > 9
    finally:
        await worker.stop()
        cleaner = await caller.atransport()
        await cleaner.delete_queue(queue)
        await cleaner.delete_exchange(queue)
        await caller.aclose()
        await remote.aclose()


@needs_rabbitmqctl
async def test_sync_calls_run_in_the_calling_thread_or_send_from_it(
    rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = f"amqp-rpc-sync.{uuid.uuid4().hex}"
    client_name = f"conveyor-test-{uuid.uuid4().hex}"
    remote = App("remote", broker=rabbitmq_url, result_backend="rpc://")
    url = f"{rabbitmq_url}{'&' if '?' in rabbitmq_url else '?'}client_name={client_name}"
    caller = App("web", broker=url, result_backend="rpc://")

    @remote.task(name="remote.square")
    def square(x: int) -> int:
        return x * x

    @remote.task(name="remote.nap")
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    on_loop: list[str] = []  # the thread each task publish on the event loop ran in
    from_threads: list[Published | None] = []
    publish, publish_from_thread = AMQPTransport.publish, AMQPTransport.publish_from_thread

    async def counting(self: AMQPTransport, envelope: Envelope, **options: Any) -> int:
        if "task" in envelope.headers:  # not the worker's replies
            on_loop.append(threading.current_thread().name)
        return await publish(self, envelope, **options)

    def counting_here(self: AMQPTransport, envelope: Envelope, **options: Any) -> Published | None:
        sent = publish_from_thread(self, envelope, **options)
        if "task" in envelope.headers:
            from_threads.append(sent)
        return sent

    read_in: list[str] = []  # the thread each reply was read in
    wake = Waiters.wake

    def reading(self: Waiters, task_id: str) -> None:
        read_in.append(threading.current_thread().name)
        wake(self, task_id)

    monkeypatch.setattr(AMQPTransport, "publish", counting)
    monkeypatch.setattr(AMQPTransport, "publish_from_thread", counting_here)
    monkeypatch.setattr(Waiters, "wake", reading)
    worker = Worker(remote, queues=[queue], concurrency=8, shutdown_grace=5.0)
    await worker.start()

    def sends(first: int, count: int) -> tuple[str, list[int]]:
        results = [
            caller.send_task("remote.square", (i,), queue=queue).get(timeout=10)
            for i in range(first, first + count)
        ]
        return threading.current_thread().name, results

    def unroutable() -> str:
        with pytest.raises(Unroutable) as caught:
            caller.send_task("remote.square", (1,), exchange="amq.direct", routing_key="nowhere")
        return str(caught.value)

    try:
        # Alone, a caller runs the private loop itself, in its own thread: the first send of a
        # route as a coroutine (it declares the route and the reply address), the later ones
        # written straight from the thread; replies are read there too.
        name, squares = await asyncio.to_thread(sends, 0, 10)
        assert squares == [i * i for i in range(10)]
        assert on_loop == [name]
        assert len(from_threads) == 9
        assert None not in from_threads
        assert read_in.count(name) >= 8  # unless the machine stalled a call past sync_loop._LINGER
        # While one call runs the loop (waiting on a nap), other callers send from their own
        # threads, and the loop the first one runs reads their confirms and replies.
        napping = asyncio.ensure_future(
            asyncio.to_thread(
                lambda: caller.send_task("remote.nap", (1.0,), queue=queue).get(timeout=10)
            )
        )
        await asyncio.sleep(0.3)
        assert len(on_loop) == 2
        parts = await asyncio.gather(*(asyncio.to_thread(sends, k * 20, 20) for k in range(2)))
        assert [v for _, part in parts for v in part] == [i * i for i in range(40)]
        assert len([sent for sent in from_threads if sent is not None]) >= 9 + 30
        # A message no queue takes says where it was routed, by either path.
        first = await asyncio.to_thread(unroutable)  # declares the route: through the loop
        second = await asyncio.to_thread(unroutable)  # from this thread
        assert from_threads[-1] is not None
        assert first == second
        assert "'amq.direct'" in first
        assert "'nowhere'" in first
        assert await napping == 1.0
        # The connection goes: calls wait for the reconnect, and none is lost.
        assert await asyncio.to_thread(close_connections_named, client_name) == 1
        _, squares = await asyncio.to_thread(sends, 0, 20)
        assert squares == [i * i for i in range(20)]
    finally:
        await worker.stop()
        await asyncio.to_thread(caller.close)
        cleaner = await remote.atransport()
        await cleaner.delete_queue(queue)
        await cleaner.delete_exchange(queue)
        await remote.aclose()
