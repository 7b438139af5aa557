"""Deep queues: publish and drain rates with 1,000,000 messages waiting against an empty queue.

    python benchmarks/deep.py sqlite|redis|rabbitmq [--waiting 1000000] [--sample 20000]
        [--rounds 3] [--queue-arguments x-queue-version=2,x-queue-mode=lazy]

Through conveyor's transport, two fresh queues on the broker: ``deep`` is filled with
``--waiting`` messages (``publish_many``, 1,000 a call), ``empty`` holds nothing. Then, in
``--rounds`` interleaved rounds (empty, deep, empty, deep, ...; this machine's load drifts by
the minute, so the two are measured side by side, not minutes apart), publish ``--sample``
task-sized messages from 100 coroutines each awaiting its confirm, and drain them again (one
consumer, prefetch 200, an ack each), leaving the ``--waiting`` messages in place. Prints the
median rates, their ratio, and what a waiting message costs: the SQLite file's bytes, Redis's
``used_memory``, or RabbitMQ's own count of the queue's memory (``rabbitmqctl list_queues
memory``), per message. ``--queue-arguments``: RabbitMQ queue arguments for both queues
(integers are sent as integers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
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


def rabbitmq_queue_memory(queue: str) -> int:
    """RabbitMQ's own count of the bytes queue ``queue`` holds (0 if rabbitmqctl cannot say)."""
    try:
        out = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "name", "memory"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    for line in out.splitlines():
        name, _, memory = line.rpartition("\t")
        if name == queue and memory.isdigit():
            return int(memory)
    return 0


def parse_arguments(text: str) -> dict[str, object]:
    """``a=1,b=lazy`` as queue arguments, numbers as integers."""
    parsed: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        parsed[key] = int(value) if value.lstrip("-").isdigit() else value
    return parsed


async def main(broker: str, waiting: int, sample: int, rounds: int, arguments: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-deep-"))
    path = tmp / "broker.db"
    prefix = f"deep-{uuid.uuid4().hex[:8]}:"
    if broker == "sqlite":
        url = f"sqlite:///{path}"
    elif broker == "redis":
        url = f"{URLS['redis']}?key_prefix={prefix}"
    else:
        url = URLS["rabbitmq"]
    tag = uuid.uuid4().hex[:8]
    empty, deep = f"deep-{tag}-empty", f"deep-{tag}-deep"
    rates: dict[tuple[str, str], list[float]] = {}
    async with open_transport(url) as transport:
        for name in (empty, deep):
            await transport.declare_queue(Queue(name, queue_arguments=parse_arguments(arguments)))
        try:
            before = await redis_memory() if broker == "redis" else 0
            started = time.perf_counter()
            for _ in range(waiting // 1000):
                await transport.publish_many(
                    [Outgoing(envelope(), routing_key=deep) for _ in range(1000)]
                )
            fill = waiting / (time.perf_counter() - started)
            stats = await transport.queue_stats(deep)
            if broker == "redis":
                cost = f"Redis used_memory {(await redis_memory() - before) / waiting:.0f} B"
            elif broker == "sqlite":
                cost = f"SQLite file (+WAL) {files_size(tmp) / waiting:.0f} B"
            else:
                held = rabbitmq_queue_memory(deep)
                cost = f"RabbitMQ queue memory {held / waiting:.0f} B"
            for n in range(rounds):
                for label, queue in (("empty", empty), ("deep", deep)):
                    publish = await publish_rate(transport, queue, sample)
                    drain = await drain_rate(transport, queue, sample)
                    rates.setdefault((label, "publish/s"), []).append(publish)
                    rates.setdefault((label, "drain/s"), []).append(drain)
                    print(f"round {n + 1} {label}: publish {publish:,.0f}/s drain {drain:,.0f}/s")
        finally:
            for name in (empty, deep):
                await transport.delete_queue(name)
    shutil.rmtree(tmp)
    print(f"{broker}: {stats.ready:,} waiting (filled at {fill:,.0f} msg/s); {cost} a message")
    print(f"medians of {rounds} interleaved rounds")
    print(f"{'':10} {'empty':>10} {'deep':>10} {'deep/empty':>11}")
    for label in ("publish/s", "drain/s"):
        low = statistics.median(rates[("empty", label)])
        high = statistics.median(rates[("deep", label)])
        print(f"{label:10} {low:10,.0f} {high:10,.0f} {high / low:11.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("broker", choices=["sqlite", "redis", "rabbitmq"])
    parser.add_argument("--waiting", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queue-arguments", default="", help="e.g. x-queue-mode=lazy")
    args = parser.parse_args()
    asyncio.run(main(args.broker, args.waiting, args.sample, args.rounds, args.queue_arguments))
