"""Deep queues: publish and drain rates with 1,000,000 messages waiting against an empty queue.

    python benchmarks/deep.py sqlite|redis|rabbitmq [--waiting 1000000] [--sample 20000]

On one fresh queue of the broker, through conveyor's transport: publish ``--sample`` task-sized
messages from 100 coroutines each awaiting its confirm, then drain them (one consumer,
prefetch 200, an ack each): the empty-queue rates. Then fill the queue with ``--waiting``
messages (``publish_many``, 1,000 a call) and measure the same publish and drain again, with
the ``--waiting`` messages still there. Prints both rates, their ratio, and what a waiting
message costs: the SQLite file's bytes, or Redis's ``used_memory``, per message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

# This directory holds redis.py, which would shadow redis-py: take it off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from conveyor.protocol.envelope import Envelope  # noqa: E402
from conveyor.routing.entities import Queue  # noqa: E402
from conveyor.transports import Transport, open_transport  # noqa: E402
from conveyor.transports.base import Outgoing  # noqa: E402

URLS = {
    "rabbitmq": os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    "redis": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
}
BODY = b'[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


def envelope() -> Envelope:
    task_id = str(uuid.uuid4())
    return Envelope(
        BODY,
        headers={"lang": "py", "task": "bench.noop", "id": task_id, "root_id": task_id},
        content_type="application/json",
        content_encoding="utf-8",
        correlation_id=task_id,
    )


async def publish_rate(transport: Transport, queue: str, count: int) -> float:
    share = count // 100

    async def publisher() -> None:
        for _ in range(share):
            await transport.publish(envelope(), routing_key=queue, mandatory=True)

    started = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(100)))
    return share * 100 / (time.perf_counter() - started)


async def drain_rate(transport: Transport, queue: str, count: int) -> float:
    consumer = await transport.consume([queue], prefetch=200)
    started = time.perf_counter()
    taken = 0
    async for delivery in consumer:
        await transport.ack(delivery)
        taken += 1
        if taken == count:
            break
    elapsed = time.perf_counter() - started
    await consumer.cancel()
    return count / elapsed


def files_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


async def redis_memory() -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(URLS["redis"])
    try:
        return int((await client.info("memory"))["used_memory"])
    finally:
        await client.aclose()


async def main(broker: str, waiting: int, sample: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-deep-"))
    path = tmp / "broker.db"
    prefix = f"deep-{uuid.uuid4().hex[:8]}:"
    if broker == "sqlite":
        url = f"sqlite:///{path}"
    elif broker == "redis":
        url = f"{URLS['redis']}?key_prefix={prefix}"
    else:
        url = URLS["rabbitmq"]
    queue = f"deep-{uuid.uuid4().hex[:8]}"
    async with open_transport(url) as transport:
        await transport.declare_queue(Queue(queue))
        try:
            empty_publish = await publish_rate(transport, queue, sample)
            empty_drain = await drain_rate(transport, queue, sample)
            before = await redis_memory() if broker == "redis" else 0
            started = time.perf_counter()
            for _ in range(waiting // 1000):
                await transport.publish_many(
                    [Outgoing(envelope(), routing_key=queue) for _ in range(1000)]
                )
            fill = waiting / (time.perf_counter() - started)
            stats = await transport.queue_stats(queue)
            if broker == "redis":
                cost = f"Redis used_memory {(await redis_memory() - before) / waiting:.0f} B"
            elif broker == "sqlite":
                cost = f"SQLite file (+WAL) {files_size(tmp) / waiting:.0f} B"
            else:
                cost = "(RabbitMQ's memory: see rabbitmqctl list_queues memory)"
            deep_publish = await publish_rate(transport, queue, sample)
            deep_drain = await drain_rate(transport, queue, sample)
        finally:
            await transport.delete_queue(queue)
    shutil.rmtree(tmp)
    print(f"{broker}: {stats.ready:,} waiting (filled at {fill:,.0f} msg/s); {cost} a message")
    print(f"{'':10} {'empty':>10} {'deep':>10} {'deep/empty':>11}")
    for label, empty, deep in (
        ("publish/s", empty_publish, deep_publish),
        ("drain/s", empty_drain, deep_drain),
    ):
        print(f"{label:10} {empty:10,.0f} {deep:10,.0f} {deep / empty:11.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("broker", choices=["sqlite", "redis", "rabbitmq"])
    parser.add_argument("--waiting", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(main(args.broker, args.waiting, args.sample))
