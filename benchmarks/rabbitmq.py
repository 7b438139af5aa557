"""RabbitMQ: conveyor against Celery 5 and Dramatiq on the same broker, in one run.

    python benchmarks/rabbitmq.py [--tasks 20000] [--roundtrips 500] [--concurrency 8]
        [--repeat 1] [--drain]

Each framework gets one worker process with the same concurrency (``--concurrency`` threads:
Celery ``-P threads``, Dramatiq ``--threads``, conveyor's default asyncio pool, which runs plain
functions in threads), prefetching 4 messages per slot (Dramatiq through
``dramatiq_queue_prefetch``), acking after the task (Celery is set to ``task_acks_late``; the
others do it by default), each on a fresh queue of the same RabbitMQ. The benchmark process is
the producer.

1. Throughput: send ``--tasks`` no-op tasks (results ignored) the way each framework sends
   fastest (Celery and Dramatiq: one ``send`` after another, unconfirmed, their default;
   conveyor: 500 coroutines calling ``asend_task``, each awaiting its confirm), then one
   marker task that writes the time it ran to a file. Throughput = tasks / (marker ran - first
   send), producer and worker running at once.
   ``--drain``: the marker, the no-ops and a marker are sent before the worker starts, and
   throughput = tasks / (last marker ran - first marker ran), the worker alone.
2. Round trip: ``--roundtrips`` times, one at a time, ``send_task(...).get()`` of an echo task
   (after 20 unmeasured ones): p50 and p99. Results: conveyor ``rpc://`` (RabbitMQ's direct
   reply-to), Celery ``rpc://``, Dramatiq's Results middleware on Redis (it has no rpc backend).

It prints a table and conveyor's ratios against the targets (throughput >= 3x Celery's and
>= 1.5x Dramatiq's; round trip p50 <= half of Celery's). The harness is ``peers.py``; the
worker processes import a copy of this file as their app module, with ``BENCH_FRAMEWORK``
saying which framework to set up.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import peers

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


def conveyor_urls(prefix: str) -> tuple[str, str]:
    return AMQP_URL, "rpc://"


def celery_config(prefix: str) -> tuple[str, str, dict[str, Any]]:
    return AMQP_URL, "rpc://", {}


def dramatiq_broker(prefix: str) -> Any:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker = RabbitmqBroker(url=AMQP_URL)
    backend = RedisBackend(url=REDIS_URL)
    broker.add_middleware(Results(backend=backend, result_ttl=peers.DRAMATIQ_RESULT_TTL_MS))
    return broker


def delete_queues(queue: str, prefix: str) -> None:
    """Delete the benchmark's queues, and the exchanges of the same name made with them."""
    from conveyor.transports import open_transport

    async def run() -> None:
        async with open_transport(AMQP_URL) as transport:
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                await transport.delete_queue(name)
                await transport.delete_exchange(name)

    asyncio.run(run())


BROKER = peers.Broker(
    "RabbitMQ", AMQP_URL, conveyor_urls, celery_config, dramatiq_broker, delete_queues
)
app = peers.worker_app(BROKER)

if __name__ == "__main__":
    peers.main(BROKER, __file__, __doc__.split("\n")[0])
