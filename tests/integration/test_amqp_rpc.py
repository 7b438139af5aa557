"""rpc:// results over RabbitMQ's direct reply-to: no reply queue, replies straight back."""

from __future__ import annotations

import asyncio
import uuid

from conveyor.app import App
from conveyor.results.rpc import RPCBackend
from conveyor.transports.amqp import DIRECT_REPLY_TO, AMQPTransport
from conveyor.worker import Worker


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
        declared = [key[1] for key in transport._topology if key[0] == "queue"]
        assert not [name for name in declared if name.startswith("conveyor.reply")]
    finally:
        await worker.stop()
        cleaner = await caller.atransport()
        await cleaner.delete_queue(queue)
        await cleaner.delete_exchange(queue)  # made with it by task_create_missing_queues
        await caller.aclose()
        await remote.aclose()
