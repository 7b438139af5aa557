"""The SQLite transport between two OS processes: throughput, wake-up latency, idle CPU.

    python benchmarks/transport_sqlite.py [--messages 20000] [--batch 100] [--samples 300]

1. Throughput: a consumer process waits on an empty queue; a producer process publishes
   ``--messages`` small messages; the consumer acks each delivery (prefetch 200) and stops after
   the last, then closes (acks durable). Rate = messages / (last ack durable - first publish).
   Three producers: ``publish_many`` in batches of ``--batch``; ``--batch`` concurrent
   ``publish`` calls at a time (group commit); and one ``publish`` awaited at a time.
2. Latency: the consumer idles; the producer publishes one message every 20 ms carrying its
   ``time.time()``; the consumer records delivery time minus that. p50/p90/p99 over
   ``--samples`` messages.
3. Idle CPU: a consumer waits on an empty queue for ``--idle`` seconds; its process CPU time over
   that window, as a percentage of one core.

Both processes share the machine's clock, so cross-process timestamps compare directly.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from conveyor import Envelope, Queue
from conveyor.transports import Outgoing, open_transport

QUEUE = "bench"


async def _consume_all(url: str, count: int, ready: Connection, out: Connection) -> None:
    async with open_transport(url) as t:
        await t.declare_queue(Queue(QUEUE))
        consumer = await t.consume([QUEUE], prefetch=200)
        ready.send("ready")
        got = 0
        async for delivery in consumer:
            await t.ack(delivery)
            got += 1
            if got == count:
                break
        await consumer.cancel()
    out.send(time.time())


async def _produce_all(url: str, count: int, mode: str, batch: int, out: Connection) -> None:
    async with open_transport(url) as t:
        await t.declare_queue(Queue(QUEUE))
        body = b'{"task": "bench", "args": [1, 2, 3]}'
        started = time.time()
        if mode == "sequential":
            for _ in range(count):
                await t.publish(Envelope(body=body), routing_key=QUEUE)
        elif mode == "concurrent":
            for start in range(0, count, batch):
                n = min(batch, count - start)
                await asyncio.gather(
                    *(t.publish(Envelope(body=body), routing_key=QUEUE) for _ in range(n))
                )
        else:
            for start in range(0, count, batch):
                n = min(batch, count - start)
                await t.publish_many(
                    [Outgoing(Envelope(body=body), routing_key=QUEUE) for _ in range(n)]
                )
        finished = time.time()
    out.send((started, finished))


async def _consume_latency(url: str, count: int, ready: Connection, out: Connection) -> None:
    latencies: list[float] = []
    async with open_transport(url) as t:
        await t.declare_queue(Queue(QUEUE))
        consumer = await t.consume([QUEUE], prefetch=10)
        ready.send("ready")
        async for delivery in consumer:
            latencies.append(time.time() - float(delivery.envelope.body))
            await t.ack(delivery)
            if len(latencies) == count:
                break
        await consumer.cancel()
    out.send(latencies)


async def _produce_paced(url: str, count: int, gap: float) -> None:
    async with open_transport(url) as t:
        await t.declare_queue(Queue(QUEUE))
        for _ in range(count):
            await asyncio.sleep(gap)
            await t.publish(Envelope(body=repr(time.time()).encode()), routing_key=QUEUE)


async def _idle(url: str, seconds: float, ready: Connection, out: Connection) -> None:
    async with open_transport(url) as t:
        await t.declare_queue(Queue(QUEUE))
        consumer = await t.consume([QUEUE], prefetch=10)

        async def wait() -> None:
            async for _ in consumer:
                raise AssertionError("the idle queue got a message")

        task = asyncio.create_task(wait())
        await asyncio.sleep(1.0)  # let start-up costs pass
        ready.send("ready")
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        await consumer.cancel()
        await task
    out.send((cpu, wall))


def consume_all(url: str, count: int, ready: Connection, out: Connection) -> None:
    asyncio.run(_consume_all(url, count, ready, out))


def produce_all(url: str, count: int, mode: str, batch: int, out: Connection) -> None:
    asyncio.run(_produce_all(url, count, mode, batch, out))


def consume_latency(url: str, count: int, ready: Connection, out: Connection) -> None:
    asyncio.run(_consume_latency(url, count, ready, out))


def produce_paced(url: str, count: int, gap: float) -> None:
    asyncio.run(_produce_paced(url, count, gap))


def idle(url: str, seconds: float, ready: Connection, out: Connection) -> None:
    asyncio.run(_idle(url, seconds, ready, out))


def throughput(url: str, messages: int, mode: str, batch: int) -> float:
    ctx = mp.get_context("spawn")
    ready_r, ready_w = ctx.Pipe(duplex=False)
    done_r, done_w = ctx.Pipe(duplex=False)
    prod_r, prod_w = ctx.Pipe(duplex=False)
    consumer = ctx.Process(target=consume_all, args=(url, messages, ready_w, done_w))
    consumer.start()
    ready_r.recv()
    producer = ctx.Process(target=produce_all, args=(url, messages, mode, batch, prod_w))
    producer.start()
    started, published = prod_r.recv()
    finished = done_r.recv()
    producer.join()
    consumer.join()
    rate = messages / (finished - started)
    label = {
        "batched": f"publish_many, {batch} per call",
        "concurrent": f"publish, {batch} concurrent calls",
        "sequential": "publish, one awaited at a time",
    }[mode]
    print(
        f"throughput ({label}): {messages} messages published+consumed+acked in "
        f"{finished - started:.2f}s = {rate:,.0f} msg/s "
        f"(publishing alone took {published - started:.2f}s)"
    )
    return rate


def latency(url: str, samples: int) -> list[float]:
    ctx = mp.get_context("spawn")
    ready_r, ready_w = ctx.Pipe(duplex=False)
    done_r, done_w = ctx.Pipe(duplex=False)
    consumer = ctx.Process(target=consume_latency, args=(url, samples, ready_w, done_w))
    consumer.start()
    ready_r.recv()
    time.sleep(0.3)
    producer = ctx.Process(target=produce_paced, args=(url, samples, 0.02))
    producer.start()
    values = sorted(done_r.recv())
    producer.join()
    consumer.join()
    q = statistics.quantiles(values, n=100)
    print(
        f"publish-to-deliver latency, idle consumer ({samples} messages, 20 ms apart): "
        f"p50 {q[49] * 1000:.2f} ms, p90 {q[89] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms"
    )
    return values


def idle_cpu(url: str, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    ready_r, ready_w = ctx.Pipe(duplex=False)
    done_r, done_w = ctx.Pipe(duplex=False)
    waiter = ctx.Process(target=idle, args=(url, seconds, ready_w, done_w))
    waiter.start()
    ready_r.recv()
    cpu, wall = done_r.recv()
    waiter.join()
    share = 100 * cpu / wall
    print(f"idle consumer CPU: {cpu * 1000:.0f} ms over {wall:.1f}s = {share:.2f}% of one core")
    return share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--dir", default=None, help="where to put the database (default: tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        for mode in ("batched", "concurrent", "sequential"):
            throughput(f"sqlite://{base / mode}.db", args.messages, mode, args.batch)
        latency(f"sqlite://{base / 'latency.db'}", args.samples)
        idle_cpu(f"sqlite://{base / 'idle.db'}", args.idle)


if __name__ == "__main__":
    main()
