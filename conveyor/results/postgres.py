"""``postgresql://user:password@host:5432/db``: results in a PostgreSQL table, woken by NOTIFY.

One row per task id (and per worker hostname for broadcast results) in the table ``table``
(default ``conveyor_results``), holding the Celery-compatible JSON document; chord joins count
their parts in ``<table>_chords`` and ``<table>_chord_parts``
(:mod:`~conveyor.results.postgres_chords`). Both are created on first use; their schema version is
checked on every start (see :mod:`~conveyor.results.postgres_connection`).

Storing is one transaction per batch: stores from one event loop that arrive while a batch is
being written go together in the next one (group commit), and the same transaction NOTIFYs the
table's channel with the task ids it stored. Waiting never polls: a waiter registers with the
process's one LISTEN connection (:mod:`~conveyor.results.postgres_listener`), then reads the
row, then sleeps until a notification names its task id; a result that landed before the
waiter started is found by that first read.

Options (URL query): ``table`` (default ``conveyor_results``), ``pool_size`` (connections for
reads and writes, default 10), ``reconnect_timeout`` (how long a statement is retried while
PostgreSQL is away, default 60 s), ``connect_timeout`` (default 10 s); every other parameter
goes to libpq (``sslmode=require``...). The driver is psycopg 3 with psycopg_pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Self

from psycopg import sql

from conveyor.errors import BrokerUnavailable
from conveyor.results import postgres_listener
from conveyor.results.base import (
    BackendHost,
    BatchingBackend,
    ChordJoin,
    ChordPart,
    StoreRequest,
    Watch,
)
from conveyor.results.group_commit import GroupCommit
from conveyor.results.meta import ResultMeta, pick_result
from conveyor.results.postgres_chords import ChordTables
from conveyor.results.postgres_connection import PgConnection, split_pg_url

__all__ = ["PostgresBackend"]

_PLAIN = ""
_NOTIFY_BYTES = 7000  # a NOTIFY payload must stay under 8000 bytes
_READ_BATCH = 1000  # task ids per SELECT


def _payloads(task_ids: Sequence[str]) -> list[str]:
    """Task ids joined by newlines, in payloads small enough for NOTIFY."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for task_id in dict.fromkeys(task_ids):
        if current and size + len(task_id) + 1 > _NOTIFY_BYTES:
            payloads.append("\n".join(current))
            current, size = [], 0
        current.append(task_id)
        size += len(task_id.encode()) + 1
    if current:
        payloads.append("\n".join(current))
    return payloads


class PostgresBackend(BatchingBackend):
    """Results in PostgreSQL; waiters woken by LISTEN/NOTIFY (see module)."""

    joins_chords = True

    def __init__(self, url: str, *, host: BackendHost) -> None:
        conninfo, options = split_pg_url(url)
        self.url = url
        self._host = host
        self._db = PgConnection(url, conninfo, options, what="PostgreSQL result backend")
        table = options.table
        self.table = table
        self._channel = table
        self._upsert = sql.SQL(
            "INSERT INTO {} (task_id, worker, state, date_done, meta) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (task_id, worker) DO UPDATE SET state = EXCLUDED.state,"
            " date_done = EXCLUDED.date_done, meta = EXCLUDED.meta"
        ).format(sql.Identifier(table))
        self._select = sql.SQL(
            "SELECT task_id, worker, meta FROM {} WHERE task_id = ANY(%s)"
        ).format(sql.Identifier(table))
        self._joins = ChordTables(table)
        self._listener: postgres_listener.Listener | None = None
        self._stores: GroupCommit[StoreRequest] = GroupCommit(self._write_batch)
        self._reads: dict[str, list[asyncio.Future[dict[str, ResultMeta]]]] = {}
        self._reading: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, host: BackendHost) -> Self:
        return cls(url, host=host)

    async def connect(self) -> None:
        if self._closed:
            raise BrokerUnavailable(f"{self._db.what} {self._db.shown} is closed")
        await self._db.open()

    async def close(self) -> None:
        if self._closed:
            return
        await self._stores.drain()
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            await postgres_listener.release(listener)
        await self._db.close()

    # storing

    @staticmethod
    def _row(request: StoreRequest) -> tuple[str, str, str, float | None, str]:
        meta = request.meta
        key = (meta.worker or "?") if request.per_worker else _PLAIN
        return (meta.task_id, key, meta.state.value, meta.date_done, meta.to_json().decode())

    async def _write(self, conn: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        async with conn.cursor() as cur:
            await cur.executemany(self._upsert, rows)
            for payload in _payloads([row[0] for row in rows]):
                await cur.execute("SELECT pg_notify(%s, %s)", (self._channel, payload))

    async def _write_batch(self, requests: list[StoreRequest]) -> None:
        rows: list[tuple[Any, ...]] = [self._row(req) for req in requests]

        async def write(conn: Any) -> None:
            await self._write(conn, rows)

        await self._db.run(write, "storing results")

    async def store_many(self, requests: Sequence[StoreRequest]) -> None:
        """Keep ``requests`` in one transaction with the batch being gathered (group commit);
        retried while PostgreSQL is away (see ``reconnect_timeout``)."""
        if not requests:
            return
        if self._closed:
            raise BrokerUnavailable(f"{self._db.what} {self._db.shown} is closed")
        for req in requests:
            req.meta.to_json()  # raise ProtocolError here, in the caller, for a bad value
        await self._stores.submit(requests)

    async def chord_start(self, group_id: str, size: int) -> None:
        await self._db.run(
            lambda conn: self._joins.start(conn, group_id, size), f"starting chord {group_id}"
        )

    async def _join_part(self, part: ChordPart, claim_seconds: float) -> ChordJoin | None:
        return await self._db.run(
            lambda conn: self._joins.part_done(conn, part, claim_seconds),
            f"counting a part of chord {part.group_id}",
        )

    async def chord_done(self, group_id: str, claim: str) -> bool:
        return await self._db.run(
            lambda conn: self._joins.done(conn, group_id, claim), f"finishing chord {group_id}"
        )

    async def chord_body_run(self, group_id: str, send: str) -> bool:
        return await self._db.run(
            lambda conn: self._joins.body_run(conn, group_id, send),
            f"marking the body of chord {group_id}",
        )

    # reading

    async def _read(self, task_id: str) -> dict[str, ResultMeta]:
        """Every row of ``task_id``. Reads asked for while one is running are made together
        in one SELECT (thousands of waiters starting at once cost a few queries, not a
        connection each)."""
        if self._closed:
            raise BrokerUnavailable(f"{self._db.what} {self._db.shown} is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, ResultMeta]] = loop.create_future()
        self._reads.setdefault(task_id, []).append(fut)
        if self._reading is None:
            self._reading = loop.create_task(self._read_batches())
        return await fut

    async def _select_many(self, conn: Any, ids: list[str]) -> list[tuple[str, str, str]]:
        cur = await conn.execute(self._select, (ids,))
        rows: list[tuple[str, str, str]] = await cur.fetchall()
        return rows

    async def _read_batches(self) -> None:
        try:
            while self._reads:
                ids = list(self._reads)[:_READ_BATCH]
                batch = {task_id: self._reads.pop(task_id) for task_id in ids}
                try:
                    rows = await self._db.run(
                        functools.partial(self._select_many, ids=ids), f"reading {len(ids)} results"
                    )
                    found: dict[str, dict[str, ResultMeta]] = {task_id: {} for task_id in ids}
                    for task_id, worker, doc in rows:
                        found[task_id][worker] = ResultMeta.from_json(doc)
                except BaseException as exc:
                    for futures in batch.values():
                        for fut in futures:
                            if not fut.done():
                                fut.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for task_id, futures in batch.items():
                    for fut in futures:
                        if not fut.done():
                            fut.set_result(dict(found[task_id]))
        finally:
            self._reading = None

    async def get(self, task_id: str) -> ResultMeta | None:
        return pick_result(await self._read(task_id))

    async def _read_all(self, task_id: str) -> Mapping[str, ResultMeta]:
        return await self._read(task_id)

    async def _listening(self) -> postgres_listener.Listener:
        if self._closed:
            raise BrokerUnavailable(f"{self._db.what} {self._db.shown} is closed")
        if self._listener is None or self._listener.failed:
            if self._listener is not None:
                await postgres_listener.release(self._listener)
            self._listener = postgres_listener.acquire(self._db, self._channel)
        await self._listener.started()
        return self._listener

    @contextlib.asynccontextmanager
    async def _watch_results(self, task_id: str) -> AsyncIterator[Watch]:
        listener = await self._listening()
        async with listener.waiters.watching(task_id) as watch:
            yield watch

    # removing

    async def _delete(self, statement: sql.Composable, params: tuple[Any, ...], doing: str) -> int:
        async def delete(conn: Any) -> int:
            cur = await conn.execute(statement, params)
            return int(cur.rowcount)

        return await self._db.run(delete, doing)

    async def forget(self, task_id: str) -> None:
        await self._delete(
            sql.SQL("DELETE FROM {} WHERE task_id = %s").format(sql.Identifier(self.table)),
            (task_id,),
            f"forgetting task {task_id}",
        )

    async def cleanup(self, *, older_than: float) -> int:
        await self._db.run(
            lambda conn: self._joins.cleanup(conn, older_than), "removing old chord joins"
        )
        return await self._delete(
            sql.SQL("DELETE FROM {} WHERE date_done < %s").format(sql.Identifier(self.table)),
            (older_than,),
            "removing old results",
        )
