"""Send and get over PostgreSQL results: conveyor's postgresql:// against Celery's database backend.

    python benchmarks/postgres.py [--roundtrips 300] [--tasks 2000] [--concurrency 8] [--repeat 1]

The harness of redis.py (``peers.py``) with Redis (database 15) as every framework's broker and
each framework's PostgreSQL result backend on the same server (``BENCH_PG_URL``, default
postgresql://postgres@127.0.0.1:5432/test), in tables of the run's own, dropped afterwards.
The figure that matters here is the round trip, ``send_task(...).get()`` one at a time: conveyor's
caller is woken by NOTIFY; Celery's database backend polls (every 0.5 s by default, as shipped).
Dramatiq has no PostgreSQL result backend and is left out (``--only`` defaults to conveyor,
conveyor-async, celery); ``--tasks`` no-ops (results ignored) are sent too, as in redis.py.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import peers

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
warnings.filterwarnings("ignore", category=DeprecationWarning)


def _tables(prefix: str) -> tuple[str, str]:
    """(conveyor's table, Celery's table stem) for the run's key prefix ("bench-1a2b3c4d:")."""
    run = prefix.strip(":").replace("-", "_")
    return f"{run}_conveyor", f"{run}_celery"


def conveyor_urls(prefix: str) -> tuple[str, str]:
    return f"{REDIS_URL}?key_prefix={prefix}", f"{PG_URL}?table={_tables(prefix)[0]}"


def celery_config(prefix: str) -> tuple[str, str, dict[str, Any]]:
    stem = _tables(prefix)[1]
    return (
        REDIS_URL,
        PG_URL.replace("postgresql://", "db+postgresql+psycopg://", 1),
        {
            "broker_transport_options": {"global_keyprefix": prefix},
            "database_table_names": {"task": f"{stem}_task", "group": f"{stem}_group"},
        },
    )


def no_dramatiq(prefix: str) -> Any:
    raise SystemExit("Dramatiq has no PostgreSQL result backend: leave it out of --only")


def clean_up(queue: str, prefix: str) -> None:
    import psycopg
    import redis

    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    mine, stem = _tables(prefix)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for table in (mine, f"{mine}_chords", f"{stem}_task", f"{stem}_group"):
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        conn.execute("DELETE FROM conveyor_schema WHERE name = %s", (mine,))


BROKER = peers.Broker(
    "Redis + PostgreSQL results", PG_URL, conveyor_urls, celery_config, no_dramatiq, clean_up
)
app = peers.worker_app(BROKER)

if __name__ == "__main__":
    defaults = {
        "--only": "conveyor,conveyor-async,celery",
        "--tasks": "2000",
        "--roundtrips": "300",
    }
    for flag, value in defaults.items():
        if flag not in sys.argv:
            sys.argv += [flag, value]
    peers.main(BROKER, __file__, __doc__.split("\n")[0])
