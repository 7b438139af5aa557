"""``sqlite:///path/results.db``: results in a SQLite file, shared by every process on the machine.

URLs are read as the SQLite broker reads them (``sqlite:///absolute.db``,
``sqlite://relative.db``); ``?poll=`` sets the fallback poll interval.

By default it is the embedded broker's own file (table ``conveyor_results``), opened as the
broker opens it (:class:`~conveyor.transports.sqlite.database.Database`): a new file is created
as a broker file, so that the broker accepts it later, and a file of another application is
refused untouched. Stores from one event loop are written together in one transaction (group
commit). Waiting never spins: each waiting process listens on the file's ``results`` wake-up
channel (:mod:`conveyor.transports.sqlite.wakeup`, the broker's own scheme); a writer wakes it
after it commits, and the waiter reads only the rows newer than the last one it saw. A slow
fallback poll covers a wake-up lost to a full socket buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from conveyor.errors import BrokerUnavailable
from conveyor.results import sqlite_chords
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
from conveyor.results.sqlite_chords import CHORD_SCHEMA
from conveyor.results.waiters import Waiters
from conveyor.transports.sqlite import database_path
from conveyor.transports.sqlite.database import Database, write_transaction
from conveyor.transports.sqlite.wakeup import SocketListener, Waker
from conveyor.urls import parse_options

__all__ = ["SQLiteBackend", "sqlite_path"]

T = TypeVar("T")
_PLAIN = ""
_CHANNEL = "results"  # the one wake-up channel, in the wake-up space "r" (results)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS conveyor_results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    worker TEXT NOT NULL,
    state TEXT NOT NULL,
    date_done REAL,
    meta BLOB NOT NULL,
    UNIQUE (task_id, worker)
);
CREATE INDEX IF NOT EXISTS conveyor_results_done ON conveyor_results (date_done);
"""


def sqlite_path(url: str) -> str:
    """The file a ``sqlite://`` URL names, read as the SQLite broker reads it (query ignored)."""
    return str(database_path(url.split("?", 1)[0]))


def _create_tables(db: sqlite3.Connection) -> None:
    for statement in (_SCHEMA + CHORD_SCHEMA).split(";"):
        if statement.strip():
            db.execute(statement)


class SQLiteBackend(BatchingBackend):
    """Results in a SQLite file; ``?poll=0.5`` sets the fallback poll interval in seconds."""

    joins_chords = True

    def __init__(self, url: str, path: str, *, poll: float = 0.5) -> None:
        self.url = url
        self.path = path
        self.poll = poll
        self._database: Database | None = None
        self._waker: Waker | None = None
        self._stores: GroupCommit[StoreRequest] = GroupCommit(self._write_batch)
        self._listener: SocketListener | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_started: asyncio.Task[None] | None = None
        self._last_seq = 0
        self._waiters = Waiters()
        self._connect_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, host: BackendHost) -> Self:
        poll = parse_options(url, {}, {"poll": (float, 0.5)}, what="result backend URL")["poll"]
        return cls(url, sqlite_path(url.split("?", 1)[0]), poll=poll)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the database's thread (connecting first if need be)."""
        if self._closed:
            raise BrokerUnavailable(f"the result backend {self.url} is closed")
        if self._database is None:
            await self.connect()
        assert self._database is not None
        return await self._database.run(lambda db: fn(db, *args))

    async def connect(self) -> None:
        async with self._connect_lock:
            if self._database is not None:
                return
            self._closed = False
            database = Database(Path(self.path), what="SQLite result store")
            await database.open()
            try:
                await database.run(write_transaction(_create_tables))
            except BaseException:
                await database.close()
                raise
            self._waker = Waker(database.path, space="r")
            self._database = database

    async def close(self) -> None:
        if self._database is None or self._closed:
            return
        await self._stores.drain()
        self._closed = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        self._watch_started = None
        self._waiters.wake_all()
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        database, self._database = self._database, None
        await database.close()
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    def _write(self, db: sqlite3.Connection, requests: Sequence[StoreRequest]) -> None:
        rows = []
        for req in requests:
            meta = req.meta
            key = (meta.worker or "?") if req.per_worker else _PLAIN
            rows.append((meta.task_id, key, meta.state.value, meta.date_done, meta.to_json()))
        write_transaction(
            lambda db: db.executemany(
                "INSERT OR REPLACE INTO conveyor_results "
                "(task_id, worker, state, date_done, meta) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        )(db)
        if self._waker is not None:
            self._waker.signal([_CHANNEL])

    async def _write_batch(self, requests: list[StoreRequest]) -> None:
        await self._run(self._write, requests)

    async def store_many(self, requests: Sequence[StoreRequest]) -> None:
        if not requests:
            return
        for req in requests:
            req.meta.to_json()  # raise ProtocolError here, in the caller, for a bad value
        await self._stores.submit(requests)

    def _read(self, db: sqlite3.Connection, task_id: str) -> dict[str, ResultMeta]:
        rows = db.execute(
            "SELECT worker, meta FROM conveyor_results WHERE task_id = ?", (task_id,)
        ).fetchall()
        return {worker: ResultMeta.from_json(meta) for worker, meta in rows}

    async def get(self, task_id: str) -> ResultMeta | None:
        return pick_result(await self._run(self._read, task_id))

    @staticmethod
    def _last_stored(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM conveyor_results").fetchone()
        return int(row[0])

    @staticmethod
    def _changed_since(db: sqlite3.Connection, seq: int) -> tuple[int, list[str]]:
        rows = db.execute(
            "SELECT seq, task_id FROM conveyor_results WHERE seq > ? ORDER BY seq", (seq,)
        ).fetchall()
        if not rows:
            return seq, []
        return rows[-1][0], [task_id for _, task_id in rows]

    async def _ensure_watching(self) -> None:
        if self._watch_started is None:
            self._watch_started = asyncio.get_running_loop().create_task(self._start_watch())
        await asyncio.shield(self._watch_started)

    async def _start_watch(self) -> None:
        if self._waker is None:
            await self.connect()
        assert self._waker is not None
        # listening before reading the last row: a store committed after the read wakes us
        self._listener = self._waker.listen([_CHANNEL])
        self._last_seq = await self._run(self._last_stored)
        self._watch_task = asyncio.get_running_loop().create_task(self._watch(self._listener))

    async def _watch(self, listener: SocketListener) -> None:
        while not self._closed:
            await listener.wait(self.poll)
            if not self._waiters:
                continue
            try:
                self._last_seq, changed = await self._run(self._changed_since, self._last_seq)
            except BrokerUnavailable:
                continue
            for task_id in changed:
                self._waiters.wake(task_id)

    async def _read_all(self, task_id: str) -> Mapping[str, ResultMeta]:
        return await self._run(self._read, task_id)

    @contextlib.asynccontextmanager
    async def _watch_results(self, task_id: str) -> AsyncIterator[Watch]:
        await self._ensure_watching()
        async with self._waiters.watching(task_id) as watch:
            yield watch

    @staticmethod
    def _delete(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
        return int(db.execute(sql, params).rowcount)

    async def forget(self, task_id: str) -> None:
        await self._run(self._delete, "DELETE FROM conveyor_results WHERE task_id = ?", (task_id,))

    async def cleanup(self, *, older_than: float) -> int:
        """Remove results done before ``older_than``, and the joins of chords started then."""
        await self._run(write_transaction(lambda db: sqlite_chords.forget_chords(db, older_than)))
        return await self._run(
            self._delete, "DELETE FROM conveyor_results WHERE date_done < ?", (older_than,)
        )

    async def chord_start(self, group_id: str, size: int) -> None:
        await self._run(write_transaction(lambda db: sqlite_chords.chord_start(db, group_id, size)))

    async def _join_part(self, part: ChordPart, claim_seconds: float) -> ChordJoin | None:
        return await self._run(
            write_transaction(lambda db: sqlite_chords.chord_part_done(db, part, claim_seconds))
        )

    async def chord_done(self, group_id: str, claim: str) -> bool:
        return await self._run(
            write_transaction(lambda db: sqlite_chords.chord_done(db, group_id, claim))
        )

    async def chord_body_run(self, group_id: str, send: str) -> bool:
        return await self._run(
            write_transaction(lambda db: sqlite_chords.chord_body_run(db, group_id, send))
        )
