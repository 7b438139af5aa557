"""PostgreSQL result stores: conveyor's postgresql:// against Celery's database backend, in one run.

    python benchmarks/postgres_results.py [--results 5000] [--threads 8] [--repeat 1]

Both on the same PostgreSQL (``BENCH_PG_URL``, default postgresql://postgres@127.0.0.1:5432/test),
each in tables of its own that are dropped afterwards, one process, no broker:

Celery is measured twice: as a client process uses it (SQLAlchemy's NullPool: a connection per
call) and as its forked worker does (a connection pool).

1. store/s: ``--results`` SUCCESS results, each with a small dict as its value. conveyor: all
   stores started at once from one event loop (``await backend.store(...)`` each; they are
   group-committed), and one awaited at a time. Celery (``db+postgresql+psycopg://``,
   SQLAlchemy): ``backend.store_result`` from ``--threads`` threads, and from one thread.
2. read/s: every result read back by task id: conveyor ``get`` (all at once, and one at a time);
   Celery ``get_task_meta`` (threads, and one thread).

The send-and-get round trip with a worker is ``benchmarks/postgres.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from conveyor.results import ResultMeta, StoreRequest, open_backend

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
warnings.filterwarnings("ignore", category=DeprecationWarning)


class _Host:
    def __init__(self) -> None:
        from conveyor.config import Settings

        self.conf = Settings()

    async def atransport(self) -> Any:
        raise AssertionError("no broker")


def _rate(count: int, seconds: float) -> float:
    return count / seconds


async def _conveyor(n: int, table: str) -> dict[str, float]:
    url = f"{PG_URL}?table={table}"
    figures: dict[str, float] = {}
    async with open_backend(url, host=_Host()) as backend:  # type: ignore[arg-type]
        metas = [
            StoreRequest(ResultMeta.success(f"c-{i}", {"n": i, "ok": True}, worker="w", task="t"))
            for i in range(n)
        ]
        started = time.perf_counter()
        await asyncio.gather(*(backend.store(m) for m in metas))
        figures["store/s concurrent"] = _rate(n, time.perf_counter() - started)
        started = time.perf_counter()
        for m in metas[: n // 5]:
            await backend.store(m)
        figures["store/s one at a time"] = _rate(n // 5, time.perf_counter() - started)
        started = time.perf_counter()
        read = await asyncio.gather(*(backend.get(m.meta.task_id) for m in metas))
        figures["read/s concurrent"] = _rate(n, time.perf_counter() - started)
        assert all(r is not None and r.result["n"] == i for i, r in enumerate(read))
        started = time.perf_counter()
        for m in metas[: n // 5]:
            await backend.get(m.meta.task_id)
        figures["read/s one at a time"] = _rate(n // 5, time.perf_counter() - started)
    return figures


def _celery(n: int, threads: int, table: str, pooled: bool) -> dict[str, float]:
    from celery import Celery
    from celery.backends.database import DatabaseBackend

    url = PG_URL.replace("postgresql://", "db+postgresql+psycopg://", 1)
    app = Celery("bench", backend=url)
    app.conf.database_table_names = {"task": f"{table}_task", "group": f"{table}_group"}
    backend = app.backend
    # Celery pools connections only in a forked worker; elsewhere (a web process) each call
    # opens one. ``pooled`` measures it as in its worker.
    assert isinstance(backend, DatabaseBackend)
    backend.session_manager.forked = pooled
    ids = [f"{'p' if pooled else 'c'}-{i}" for i in range(n)]
    figures: dict[str, float] = {}

    def timed(label: str, fn: Callable[[str], Any], items: list[str], workers: int) -> None:
        started = time.perf_counter()
        if workers == 1:
            for item in items:
                fn(item)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(fn, items))
        figures[label] = _rate(len(items), time.perf_counter() - started)

    def store(task_id: str) -> None:
        backend.store_result(task_id, {"n": 1, "ok": True}, "SUCCESS")

    backend.store_result("warm-up", 0, "SUCCESS")  # creates the tables
    timed("store/s concurrent", store, ids, threads)
    timed("store/s one at a time", store, ids[: n // 5], 1)
    timed("read/s concurrent", backend.get_task_meta, ids, threads)
    timed("read/s one at a time", backend.get_task_meta, ids[: n // 5], 1)
    assert backend.get_task_meta(ids[-1])["status"] == "SUCCESS"
    backend.ResultSession().get_bind().dispose()
    return figures


def _drop(tables: list[str]) -> None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for table in tables:
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        conn.execute("DELETE FROM conveyor_schema WHERE name = ANY(%s)", (tables,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    rounds: dict[str, list[dict[str, float]]] = {"conveyor": [], "celery": [], "pooled": []}
    for n in range(args.repeat):
        run = uuid.uuid4().hex[:8]
        mine, theirs = f"bench_conveyor_{run}", f"bench_celery_{run}"
        try:
            rounds["conveyor"].append(asyncio.run(_conveyor(args.results, mine)))
            rounds["celery"].append(_celery(args.results, args.threads, theirs, pooled=False))
            rounds["pooled"].append(_celery(args.results, args.threads, theirs, pooled=True))
        finally:
            _drop([mine, f"{mine}_chords", f"{theirs}_task", f"{theirs}_group"])
        print(f"round {n + 1}: " + " / ".join(str(r[-1]) for r in rounds.values()), flush=True)
    labels = list(rounds["conveyor"][0])
    print(
        f"\n{args.results} results, PostgreSQL at {PG_URL.split('@')[-1]}, median of "
        f"{args.repeat}; Celery concurrent = {args.threads} threads\n"
    )
    print(
        f"{'':24} {'conveyor':>10} {'celery':>10} {'ratio':>7} {'celery pooled':>14} {'ratio':>7}"
    )
    for label in labels:
        mine_v, theirs_v, pooled_v = (
            statistics.median(r[label] for r in rounds[k]) for k in ("conveyor", "celery", "pooled")
        )
        print(
            f"{label:24} {mine_v:10.0f} {theirs_v:10.0f} {mine_v / theirs_v:7.2f} "
            f"{pooled_v:14.0f} {mine_v / pooled_v:7.2f}"
        )


if __name__ == "__main__":
    main()
