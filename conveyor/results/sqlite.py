"""``sqlite:///path/results.db``: results in a SQLite file, shared by every process on the machine.

URLs are read as the SQLite broker reads them (``sqlite:///absolute.db``,
``sqlite://relative.db``); ``?poll=`` sets the fallback poll interval.

By default it is the embedded broker's own file (tables ``conveyor_results`` and
``conveyor_result_bells``); a new file is created as a broker file first, so that the broker
accepts it later. Stores from one event loop are written together in one transaction
(group commit). Waiting never spins: each waiting process binds a Unix datagram socket (its
"bell") and records it in ``conveyor_result_bells``; a writer rings every bell after it commits,
and the waiter reads only the rows newer than the last one it saw. A slow fallback poll covers a
bell lost to a full socket buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, TypeVar
from urllib.parse import parse_qsl, urlsplit

from conveyor.errors import BrokerUnavailable, ConfigurationError
from conveyor.results.base import BackendHost, ResultBackend, StoreRequest, Watch
from conveyor.results.meta import ResultMeta, pick_result
from conveyor.results.waiters import Waiters
from conveyor.transports.sqlite import SQLiteTransport, database_path

__all__ = ["SQLiteBackend", "sqlite_path"]

T = TypeVar("T")
_PLAIN = ""
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
CREATE TABLE IF NOT EXISTS conveyor_result_bells (
    name TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    created REAL NOT NULL
);
"""


def sqlite_path(url: str) -> str:
    """The file a ``sqlite://`` URL names, read as the SQLite broker reads it (query ignored)."""
    return str(database_path(url.split("?", 1)[0]))


def _is_new_file(path: str) -> bool:
    return not os.path.exists(path) or os.path.getsize(path) == 0


class _Bell:
    """This process's doorbell: a non-blocking Unix datagram socket writers can ring."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        token = uuid.uuid4().hex[:16]
        if sys.platform == "linux":
            # An abstract socket vanishes with its process; nothing to clean up on disk.
            self.name = f"@conveyor-results-{token}"
            self.sock.bind("\0" + self.name[1:])
            self.path: str | None = None
        else:
            self.path = os.path.join(tempfile.gettempdir(), f"cvr-{token}.sock")
            self.name = self.path
            self.sock.bind(self.path)

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self.sock.recv(64):
                pass

    def close(self) -> None:
        self.sock.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _address(name: str) -> str:
    return "\0" + name[1:] if name.startswith("@") else name


class SQLiteBackend(ResultBackend):
    """Results in a SQLite file; ``?poll=0.5`` sets the fallback poll interval in seconds."""

    def __init__(self, url: str, path: str, *, poll: float = 0.5) -> None:
        self.url = url
        self.path = path
        self.poll = poll
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._ring_sock: socket.socket | None = None
        self._pending: list[tuple[StoreRequest, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._bell: _Bell | None = None
        self._bell_event: asyncio.Event | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_started: asyncio.Task[None] | None = None
        self._last_seq = 0
        self._waiters = Waiters()
        self._connect_lock: asyncio.Lock | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, host: BackendHost) -> Self:
        options = dict(parse_qsl(urlsplit(url).query))
        try:
            poll = float(options.pop("poll", 0.5))
        except ValueError as exc:
            raise ConfigurationError(f"result backend {url!r}: poll must be seconds") from exc
        if options:
            raise ConfigurationError(
                f"result backend {url!r}: unknown option(s) {', '.join(options)}; only poll="
            )
        return cls(url, sqlite_path(url.split("?", 1)[0]), poll=poll)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise BrokerUnavailable(f"the result backend {self.url} is closed")
        if self._executor is None:
            await self.connect()
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise BrokerUnavailable(
                f"cannot open the SQLite result store {self.path!r}: {exc}"
            ) from exc
        self._db = db
        self._ring_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._ring_sock.setblocking(False)

    async def connect(self) -> None:
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._executor is not None:
                return
            self._closed = False
            if await asyncio.to_thread(_is_new_file, self.path):
                await self._create_as_broker_file()
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-results")
            try:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
            except BaseException:
                self._executor.shutdown(wait=False)
                self._executor = None
                raise

    async def _create_as_broker_file(self) -> None:
        # The broker refuses files with tables it did not create; let it create the file first,
        # so that results and the broker can share it whichever process opens it first.
        broker = SQLiteTransport.from_url(
            f"sqlite://{await asyncio.to_thread(os.path.abspath, self.path)}"
        )
        await broker.connect()
        await broker.close()

    async def close(self) -> None:
        if self._executor is None or self._closed:
            return
        if self._pending or self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flush()
        self._closed = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        self._watch_started = None
        self._waiters.wake_all()
        bell = self._bell
        self._bell = None
        if bell is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(bell.sock.fileno())
        executor = self._executor

        def shutdown() -> None:
            if self._db is not None:
                if bell is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute(
                            "DELETE FROM conveyor_result_bells WHERE name = ?", (bell.name,)
                        )
                self._db.close()
                self._db = None
            if self._ring_sock is not None:
                self._ring_sock.close()
            if bell is not None:
                bell.close()

        await asyncio.get_running_loop().run_in_executor(executor, shutdown)
        executor.shutdown(wait=True)
        self._executor = None

    def _write(self, requests: Sequence[StoreRequest]) -> None:
        db = self._db
        assert db is not None
        rows = []
        for req in requests:
            meta = req.meta
            key = (meta.worker or "?") if req.per_worker else _PLAIN
            rows.append((meta.task_id, key, meta.state.value, meta.date_done, meta.to_json()))
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO conveyor_results "
                    "(task_id, worker, state, date_done, meta) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                bells = [r[0] for r in db.execute("SELECT name FROM conveyor_result_bells")]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise BrokerUnavailable(f"cannot store results in {self.path!r}: {exc}") from exc
        self._ring(bells)

    def _ring(self, bells: Sequence[str]) -> None:
        sock = self._ring_sock
        assert sock is not None
        assert self._db is not None
        gone = []
        for name in bells:
            try:
                sock.sendto(b"!", _address(name))
            except (BlockingIOError, InterruptedError):
                pass  # its buffer is full: a ring is already waiting to be read
            except (ConnectionRefusedError, FileNotFoundError):
                gone.append((name,))
            except OSError:
                pass
        if gone:
            with contextlib.suppress(sqlite3.Error):
                self._db.executemany("DELETE FROM conveyor_result_bells WHERE name = ?", gone)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._run(self._write, [req for req, _ in batch])
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._flushing = None

    async def store(self, request: StoreRequest) -> None:
        await self.store_many([request])

    async def store_many(self, requests: Sequence[StoreRequest]) -> None:
        if not requests:
            return
        for req in requests:
            req.meta.to_json()  # raise ProtocolError here, in the caller, for a bad value
        loop = asyncio.get_running_loop()
        futures = []
        for req in requests:
            fut: asyncio.Future[None] = loop.create_future()
            self._pending.append((req, fut))
            futures.append(fut)
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        await asyncio.gather(*futures)

    def _read(self, task_id: str) -> dict[str, ResultMeta]:
        db = self._db
        assert db is not None
        rows = db.execute(
            "SELECT worker, meta FROM conveyor_results WHERE task_id = ?", (task_id,)
        ).fetchall()
        return {worker: ResultMeta.from_json(meta) for worker, meta in rows}

    async def get(self, task_id: str) -> ResultMeta | None:
        return pick_result(await self._run(self._read, task_id))

    def _start_watching(self) -> int:
        db = self._db
        assert db is not None
        assert self._bell is not None
        db.execute(
            "INSERT OR REPLACE INTO conveyor_result_bells (name, pid, created) VALUES (?, ?, ?)",
            (self._bell.name, os.getpid(), time.time()),
        )
        row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM conveyor_results").fetchone()
        return int(row[0])

    def _changed_since(self, seq: int) -> tuple[int, list[str]]:
        db = self._db
        assert db is not None
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
        loop = asyncio.get_running_loop()
        bell = self._bell = _Bell()
        event = self._bell_event = asyncio.Event()

        def on_ring() -> None:
            bell.drain()
            event.set()

        loop.add_reader(bell.sock.fileno(), on_ring)
        self._last_seq = await self._run(self._start_watching)
        self._watch_task = loop.create_task(self._watch())

    async def _watch(self) -> None:
        event = self._bell_event
        assert event is not None
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self.poll)
            event.clear()
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

    def _delete(self, sql: str, params: tuple[Any, ...]) -> int:
        db = self._db
        assert db is not None
        try:
            return db.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise BrokerUnavailable(f"cannot delete results in {self.path!r}: {exc}") from exc

    async def forget(self, task_id: str) -> None:
        await self._run(self._delete, "DELETE FROM conveyor_results WHERE task_id = ?", (task_id,))

    async def cleanup(self, *, older_than: float) -> int:
        return await self._run(
            self._delete, "DELETE FROM conveyor_results WHERE date_done < ?", (older_than,)
        )
