"""memory:// specifics: transports opened with one name share one broker, across loops too."""

from __future__ import annotations

import asyncio
import threading
import uuid

from conveyor import Queue
from conveyor.transports import open_transport

from .helpers import bodies, drain, env, take


async def test_same_name_shares_a_broker_other_names_do_not() -> None:
    name = f"memory://shared-{uuid.uuid4().hex}"
    other_name = f"memory://other-{uuid.uuid4().hex}"
    async with (
        open_transport(name) as a,
        open_transport(name) as b,
        open_transport(other_name) as other,
    ):
        await a.declare_queue(Queue("q"))
        await b.publish(env("seen"), routing_key="q")
        assert await other.publish(env("lost"), routing_key="q") == 0
        assert bodies(await drain(a, "q")) == ["seen"]


async def test_a_producer_on_another_thread_and_loop_wakes_the_consumer() -> None:
    url = f"memory://threads-{uuid.uuid4().hex}"
    async with open_transport(url) as worker:
        await worker.declare_queue(Queue("jobs"))
        consumer = await worker.consume(["jobs"], prefetch=1)
        waiting = asyncio.create_task(take(consumer, 1, timeout=3))
        await asyncio.sleep(0.05)

        async def produce() -> None:
            async with open_transport(url) as producer:
                await producer.publish(env("from a thread"), routing_key="jobs")

        thread = threading.Thread(target=lambda: asyncio.run(produce()))
        thread.start()
        (delivery,) = await waiting
        await asyncio.to_thread(thread.join)
        assert delivery.envelope.body == b"from a thread"
        await worker.ack(delivery)
        await consumer.cancel()
