"""Redis: conveyor against Celery 5 and Dramatiq with their Redis brokers, in one run.

    python benchmarks/redis.py [--tasks 20000] [--roundtrips 500] [--concurrency 8]
        [--repeat 1] [--drain]

Each framework gets one worker process with the same concurrency (``--concurrency`` threads:
Celery ``-P threads``, Dramatiq ``--threads``, conveyor's default asyncio pool, which runs plain
functions in threads), prefetching 4 messages per slot (Dramatiq through
``dramatiq_queue_prefetch``), acking after the task (Celery is set to ``task_acks_late``), on
the same Redis (database 15), each under a key prefix of its own that is deleted afterwards. The
benchmark process is the producer.

1. Throughput: send ``--tasks`` no-op tasks (results ignored) the way each framework sends
   fastest (Celery and Dramatiq: one ``send`` after another; conveyor: 500 coroutines calling
   ``asend_task``, each awaiting Redis's reply), then one marker task that writes the time it
   ran to a file. Throughput = tasks / (marker ran - first send), producer and worker at once.
   ``--drain``: the marker, the no-ops and a marker are sent before the worker starts, and
   throughput = tasks / (last marker ran - first marker ran), the worker alone.
2. Round trip: ``--roundtrips`` times, one at a time, ``send_task(...).get()`` of an echo task
   (after 20 unmeasured ones), with each framework's Redis result backend: p50 and p99.

It prints a table and conveyor's ratios against the targets (throughput >= 3x Celery's and
>= 1.5x Dramatiq's; round trip p50 <= half of Celery's). The harness is ``peers.py``, which
also takes this directory off ``sys.path`` so that ``import redis`` finds redis-py; the worker
processes import a copy of this file as ``redis_bench``, with ``BENCH_FRAMEWORK`` saying which
framework to set up.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import peers

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")

# Celery's and Dramatiq's Redis clients call redis-py APIs it has deprecated.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def conveyor_urls(prefix: str) -> tuple[str, str]:
    url = f"{REDIS_URL}?key_prefix={prefix}"
    return url, url


def celery_config(prefix: str) -> tuple[str, str, dict[str, Any]]:
    return (
        REDIS_URL,
        REDIS_URL,
        {
            "broker_transport_options": {"global_keyprefix": prefix},
            "result_backend_transport_options": {"global_keyprefix": prefix},
        },
    )


def dramatiq_broker(prefix: str) -> Any:
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    namespace = prefix.rstrip(":")
    broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    backend = RedisBackend(url=REDIS_URL, namespace=namespace)
    broker.add_middleware(Results(backend=backend, result_ttl=peers.DRAMATIQ_RESULT_TTL_MS))
    return broker


def delete_keys(queue: str, prefix: str) -> None:
    """Delete every key under the run's prefix (its queues and results)."""
    import redis

    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])


BROKER = peers.Broker(
    "Redis", REDIS_URL, conveyor_urls, celery_config, dramatiq_broker, delete_keys
)
app = peers.worker_app(BROKER)

if __name__ == "__main__":
    peers.main(BROKER, __file__, __doc__.split("\n")[0])
