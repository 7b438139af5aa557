"""The SQLite broker's storage primitives: the virtual broker's records and messages in rows.

Writes are transactions (``BEGIN IMMEDIATE``) on the file's :class:`~.database.Database`;
concurrent publishes of one connection share one transaction (group commit). After a write
that made messages ready, the queues' listeners are woken (:mod:`.wakeup`). A consumer's
dequeue first probes without the write lock, so idle consumers never queue for it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from conveyor.errors import BrokerUnavailable
from conveyor.routing.entities import Exchange, FrozenMapping, Queue
from conveyor.routing.topology import BoundBinding, Topology
from conveyor.transports.base import DeliveryTag, QueueStats
from conveyor.transports.sqlite.codec import (
    decode_exchange,
    decode_queue,
    encode_binding_arguments,
    encode_exchange,
    encode_queue,
    stored_message,
)
from conveyor.transports.sqlite.database import Database, read_transaction, write_transaction
from conveyor.transports.sqlite.file_faults import DEFAULT_FILE_MODE
from conveyor.transports.sqlite.schema import MESSAGE_COLUMNS
from conveyor.transports.sqlite.wakeup import Waker
from conveyor.transports.storage import (
    Listener,
    NewMessage,
    QueueActivity,
    Reaped,
    StaleTopology,
    Storage,
    StoredMessage,
    TopologySnapshot,
    Writer,
)

__all__ = ["SQLiteStorage"]

T = TypeVar("T")

_CHUNK = 500
_TOUCH_EVERY = 0.05


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


@dataclass(slots=True)
class _Enqueue:
    """One caller's :meth:`SQLiteStorage.enqueue`, waiting for the next group commit."""

    rows: list[tuple[Any, ...]]
    targets: set[str]
    topology_version: int
    connection: str
    settle: Sequence[DeliveryTag]
    future: asyncio.Future[list[StoredMessage]]


class SQLiteStorage(Storage):
    """Storage primitives on one SQLite file; one sqlite3 connection on a thread of its own."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float = 30.0,
        synchronous: str = "normal",
        file_mode: int = DEFAULT_FILE_MODE,
    ) -> None:
        self.path = path
        self._database = Database(
            path, busy_timeout=busy_timeout, synchronous=synchronous, file_mode=file_mode
        )
        self._waker: Waker | None = None
        self._registered: set[str] = set()
        self._touched: dict[str, float] = {}
        self._limits: tuple[int, dict[str, int]] | None = None
        self._enqueues: list[_Enqueue] = []
        self._due_cache: tuple[tuple[str, ...], float | None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._committing = False

    async def open(self) -> None:
        if self._database.is_open:
            return
        await self._database.open()
        self._waker = Waker(self.path)
        self._waker.clean_stale()

    async def close(self) -> None:
        if not self._database.is_open:
            return
        await self._database.close()
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    def _signal(self, queues: Iterable[str]) -> None:
        waker = self._waker
        if waker is not None:
            waker.signal(queues)

    # topology

    async def load_topology(self) -> TopologySnapshot:
        def load(db: sqlite3.Connection) -> TopologySnapshot:
            version = db.execute("SELECT value FROM meta WHERE key='topology_version'").fetchone()
            exchanges = [
                decode_exchange(n, d)
                for n, d in db.execute("SELECT name, definition FROM exchanges")
            ]
            queues: list[Queue] = []
            owners: dict[str, str] = {}
            for name, data, owner in db.execute("SELECT name, definition, owner FROM queues"):
                queues.append(decode_queue(name, data))
                if owner is not None:
                    owners[name] = owner
            bindings = [
                BoundBinding(e, q, k, FrozenMapping(orjson.loads(a)))
                for e, q, k, a in db.execute(
                    "SELECT exchange, queue, routing_key, arguments FROM bindings ORDER BY rowid"
                )
            ]
            topology = Topology.build(exchanges, queues, bindings)
            return TopologySnapshot(int(version[0]), topology, owners)

        return await self._database.run(read_transaction(load))

    async def topology_version(self) -> int:
        def read(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT value FROM meta WHERE key='topology_version'").fetchone()
            return int(row[0])

        return await self._database.run(read)

    @staticmethod
    def _bump(db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = value + 1 WHERE key='topology_version'")

    async def add_exchange(self, exchange: Exchange) -> Exchange:
        data = encode_exchange(exchange)

        def add(db: sqlite3.Connection) -> Exchange:
            row = db.execute(
                "SELECT definition FROM exchanges WHERE name=?", (exchange.name,)
            ).fetchone()
            if row is not None:
                return decode_exchange(exchange.name, row[0])
            db.execute(
                "INSERT INTO exchanges (name, definition) VALUES (?, ?)", (exchange.name, data)
            )
            self._bump(db)
            return exchange

        return await self._database.run(write_transaction(add))

    async def remove_exchange(self, name: str) -> None:
        def remove(db: sqlite3.Connection) -> None:
            if db.execute("DELETE FROM exchanges WHERE name=?", (name,)).rowcount:
                db.execute("DELETE FROM bindings WHERE exchange=?", (name,))
                self._bump(db)

        await self._database.run(write_transaction(remove))

    async def add_queue(
        self, queue: Queue, *, owner: str | None = None
    ) -> tuple[Queue, str | None]:
        data = encode_queue(queue)
        max_length = queue.arguments.get("x-max-length")

        def add(db: sqlite3.Connection) -> tuple[Queue, str | None]:
            now = time.time()
            row = db.execute(
                "SELECT definition, owner FROM queues WHERE name=?", (queue.name,)
            ).fetchone()
            if row is not None:
                db.execute("UPDATE queues SET used_at=? WHERE name=?", (now, queue.name))
                return decode_queue(queue.name, row[0]), row[1]
            db.execute(
                "INSERT INTO queues (name, definition, owner, max_length, used_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (queue.name, data, owner, max_length, now),
            )
            self._bump(db)
            return queue, owner

        return await self._database.run(write_transaction(add))

    async def remove_queue(self, name: str) -> int:
        def remove(db: sqlite3.Connection) -> int:
            if not db.execute("DELETE FROM queues WHERE name=?", (name,)).rowcount:
                return 0
            db.execute("DELETE FROM bindings WHERE queue=?", (name,))
            db.execute("DELETE FROM consumers WHERE queue=?", (name,))
            ready = self._delete_ready(db, name)
            db.execute("DELETE FROM messages WHERE lease IS NOT NULL AND queue=?", (name,))
            self._bump(db)
            return ready

        removed = await self._database.run(write_transaction(remove))
        self._signal([name])
        return removed

    @staticmethod
    def _delete_ready(db: sqlite3.Connection, queue: str) -> int:
        due = db.execute(
            "DELETE FROM messages WHERE queue=? AND lease IS NULL AND not_before IS NULL",
            (queue,),
        ).rowcount
        delayed = db.execute(
            "DELETE FROM messages WHERE queue=? AND not_before IS NOT NULL AND lease IS NULL",
            (queue,),
        ).rowcount
        return int(due + delayed)

    async def add_binding(self, bound: BoundBinding) -> None:
        await self._change_binding(
            "INSERT OR IGNORE INTO bindings (exchange, queue, routing_key, arguments) "
            "VALUES (?, ?, ?, ?)",
            bound,
        )

    async def remove_binding(self, bound: BoundBinding) -> None:
        await self._change_binding(
            "DELETE FROM bindings WHERE exchange=? AND queue=? AND routing_key=? AND arguments=?",
            bound,
        )

    async def _change_binding(self, sql: str, bound: BoundBinding) -> None:
        """Run ``sql`` on the binding's row; a change bumps the topology version."""
        params = (bound.exchange, bound.queue, bound.routing_key, encode_binding_arguments(bound))

        def change(db: sqlite3.Connection) -> None:
            if db.execute(sql, params).rowcount:
                self._bump(db)

        await self._database.run(write_transaction(change))

    # messages

    @staticmethod
    def _settle(db: sqlite3.Connection, tags: Sequence[DeliveryTag], connection: str) -> int:
        removed = 0
        for chunk in _chunks(list(tags)):
            removed += db.execute(
                f"DELETE FROM messages WHERE id IN ({_marks(len(chunk))}) AND lease=?",
                (*chunk, connection),
            ).rowcount
        return removed

    @staticmethod
    def _promote(db: sqlite3.Connection, queue: str, now: float) -> bool:
        """Move due delayed messages of ``queue`` to its tail (new ids keep FIFO by due time)."""
        due = [
            r[0]
            for r in db.execute(
                "SELECT id FROM messages WHERE queue=? AND not_before IS NOT NULL "
                "AND not_before <= ? ORDER BY not_before, id",
                (queue, now),
            )
        ]
        if not due:
            return False
        for chunk in _chunks(due):
            marks = _marks(len(chunk))
            db.execute(
                "INSERT INTO messages (queue, priority, not_before, expires_at, lease, "
                "delivery_count, exchange, routing_key, envelope) "
                "SELECT queue, priority, NULL, expires_at, NULL, delivery_count, exchange, "
                f"routing_key, envelope FROM messages WHERE id IN ({marks}) "
                "ORDER BY not_before, id",
                chunk,
            )
            db.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
        return True

    async def enqueue(
        self, messages: Sequence[NewMessage], writer: Writer, *, settle: Sequence[DeliveryTag] = ()
    ) -> list[StoredMessage]:
        """See :meth:`Storage.enqueue`. Concurrent calls share one transaction (group commit);
        each still succeeds or fails on its own topology version."""
        encoded: dict[int, bytes] = {}
        rows = []
        for m in messages:
            data = encoded.get(id(m.envelope))
            if data is None:
                data = encoded[id(m.envelope)] = m.envelope.to_bytes()
            rows.append(
                (m.queue, m.priority, m.not_before, m.expires_at, m.exchange, m.routing_key, data)
            )
        future: asyncio.Future[list[StoredMessage]] = asyncio.get_running_loop().create_future()
        targets = {m.queue for m in messages}
        request = _Enqueue(
            rows, targets, writer.topology_version, writer.connection, settle, future
        )
        if self._committing:
            self._enqueues.append(request)  # joins the next group commit
            return await future
        # nothing in flight: commit this one at once, without a trip through a task
        self._committing = True
        try:
            work = self._write_then_signal(self._enqueue_all([request]), targets)
            (result,) = await self._database.run(work)
        finally:
            self._committing = False
            if self._enqueues and (self._committer is None or self._committer.done()):
                self._committer = asyncio.create_task(self._commit_enqueues())
        if isinstance(result, StaleTopology):
            raise result
        return result

    async def _commit_enqueues(self) -> None:
        self._committing = True
        try:
            await self._commit_pending()
        finally:
            self._committing = False

    async def _commit_pending(self) -> None:
        while self._enqueues:
            batch, self._enqueues = self._enqueues, []
            batch = [r for r in batch if not r.future.done()]
            if not batch:
                continue
            targets = set().union(*(r.targets for r in batch))
            try:
                work = self._write_then_signal(self._enqueue_all(batch), targets)
                results = await self._database.run(work)
            except BaseException as exc:
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for request, result in zip(batch, results, strict=True):
                if request.future.done():
                    continue
                if isinstance(result, StaleTopology):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)

    def _enqueue_all(
        self, batch: list[_Enqueue]
    ) -> Callable[[sqlite3.Connection], list[list[StoredMessage] | StaleTopology]]:
        return lambda db: [self._enqueue(db, request) for request in batch]

    def _enqueue(
        self, db: sqlite3.Connection, request: _Enqueue
    ) -> list[StoredMessage] | StaleTopology:
        (version,) = db.execute("SELECT value FROM meta WHERE key='topology_version'").fetchone()
        if version != request.topology_version:
            return StaleTopology(f"topology is at {version}, not {request.topology_version}")
        if request.settle:
            self._settle(db, request.settle, request.connection)
        now = time.time()
        for queue in request.targets:
            self._promote(db, queue, now)  # what became due before this publish goes first
        db.executemany(
            "INSERT INTO messages (queue, priority, not_before, expires_at, exchange, "
            "routing_key, envelope) VALUES (?, ?, ?, ?, ?, ?, ?)",
            request.rows,
        )
        overflow: list[StoredMessage] = []
        limits = self._max_lengths(db, version)
        for name in request.targets & limits.keys():
            (count,) = db.execute(
                "SELECT count(*) FROM messages WHERE queue=? AND lease IS NULL "
                "AND not_before IS NULL",
                (name,),
            ).fetchone()
            if count > limits[name]:
                overflow.extend(
                    stored_message(r)
                    for r in db.execute(
                        "UPDATE messages SET lease=? WHERE id IN (SELECT id FROM messages "
                        "WHERE queue=? AND lease IS NULL AND not_before IS NULL ORDER BY "
                        f"priority DESC, id LIMIT ?) RETURNING {MESSAGE_COLUMNS}",
                        (request.connection, name, count - limits[name]),
                    ).fetchall()
                )
        return overflow

    def _max_lengths(self, db: sqlite3.Connection, version: int) -> dict[str, int]:
        """``x-max-length`` of each queue that has one (cached per topology version)."""
        cached = self._limits
        if cached is None or cached[0] != version:
            rows = db.execute("SELECT name, max_length FROM queues WHERE max_length IS NOT NULL")
            cached = self._limits = (version, {name: int(limit) for name, limit in rows})
        return cached[1]

    def _write_then_signal(
        self, fn: Callable[[sqlite3.Connection], T], queues: Iterable[str]
    ) -> Callable[[sqlite3.Connection], T]:
        transaction = write_transaction(fn)

        def run(db: sqlite3.Connection) -> T:
            result = transaction(db)
            self._signal(queues)
            return result

        return run

    async def dequeue(
        self, queues: Sequence[str], *, connection: str, limit: int, ack: Sequence[DeliveryTag] = ()
    ) -> list[StoredMessage]:
        now = time.time()
        touch = [q for q in queues if now - self._touched.get(q, 0.0) > _TOUCH_EVERY]
        for q in touch:
            self._touched[q] = now

        def dequeue(db: sqlite3.Connection) -> list[StoredMessage]:
            if ack:
                self._settle(db, ack, connection)
            taken: list[StoredMessage] = []
            for queue in queues:
                self._promote(db, queue, now)
                rows = db.execute(
                    "UPDATE messages SET lease=?, delivery_count=delivery_count+1 WHERE id IN "
                    "(SELECT id FROM messages WHERE queue=? AND lease IS NULL AND not_before IS "
                    f"NULL ORDER BY priority DESC, id LIMIT ?) RETURNING {MESSAGE_COLUMNS}",
                    (connection, queue, limit - len(taken)),
                ).fetchall()
                rows.sort(key=lambda r: (-r[2], r[0]))
                taken.extend(stored_message(r) for r in rows)
                if len(taken) >= limit:
                    break
            if touch:
                db.execute(
                    f"UPDATE queues SET used_at=? WHERE name IN ({_marks(len(touch))})",
                    (now, *touch),
                )
            return taken

        take = write_transaction(dequeue)
        probe = not ack and not touch
        key = tuple(queues)

        def probe_then_dequeue(db: sqlite3.Connection) -> list[StoredMessage]:
            if probe and not self._any_ready(db, queues):
                # nothing to take: spare the write lock, and answer the next_due call that
                # follows (anything published after this read wakes the listener anyway)
                self._due_cache = (key, self._next_due(db, queues))
                return []
            return take(db)

        return await self._database.run(probe_then_dequeue)

    @staticmethod
    def _any_ready(db: sqlite3.Connection, queues: Sequence[str]) -> bool:
        now = time.time()
        for queue in queues:
            if (
                db.execute(
                    "SELECT 1 FROM messages WHERE queue=? AND lease IS NULL AND not_before IS NULL "
                    "LIMIT 1",
                    (queue,),
                ).fetchone()
                or db.execute(
                    "SELECT 1 FROM messages WHERE queue=? AND not_before IS NOT NULL "
                    "AND not_before <= ? LIMIT 1",
                    (queue, now),
                ).fetchone()
            ):
                return True
        return False

    async def claim_expired(self, *, connection: str, limit: int) -> list[StoredMessage]:
        def claim(db: sqlite3.Connection) -> list[StoredMessage]:
            rows = db.execute(
                "UPDATE messages SET lease=?, not_before=NULL WHERE id IN (SELECT id FROM "
                "messages WHERE expires_at IS NOT NULL AND expires_at <= ? AND lease IS NULL "
                f"ORDER BY expires_at LIMIT ?) RETURNING {MESSAGE_COLUMNS}",
                (connection, time.time(), limit),
            ).fetchall()
            return [stored_message(r) for r in rows]

        return await self._database.run(write_transaction(claim))

    async def ack(self, tags: Sequence[DeliveryTag], *, connection: str) -> int:
        if not tags:
            return 0
        return await self._database.run(
            write_transaction(lambda db: self._settle(db, tags, connection))
        )

    async def release(self, tags: Sequence[DeliveryTag], *, connection: str) -> int:
        if not tags:
            return 0
        woken: set[str] = set()

        def release(db: sqlite3.Connection) -> int:
            count = 0
            for chunk in _chunks(list(tags)):
                for (queue,) in db.execute(
                    f"UPDATE messages SET lease=NULL WHERE id IN ({_marks(len(chunk))}) "
                    "AND lease=? RETURNING queue",
                    (*chunk, connection),
                ):
                    woken.add(queue)
                    count += 1
            return count

        released = await self._database.run(write_transaction(release))
        self._signal(woken)
        return released

    @staticmethod
    def _next_due(db: sqlite3.Connection, queues: Sequence[str]) -> float | None:
        now = time.time()
        soonest: float | None = None
        for queue in queues:
            (at,) = db.execute(
                "SELECT min(not_before) FROM messages WHERE queue=? AND not_before IS NOT NULL "
                "AND not_before > ?",
                (queue, now),
            ).fetchone()
            if at is not None and (soonest is None or at < soonest):
                soonest = at
        return soonest

    async def next_due(self, queues: Sequence[str]) -> float | None:
        cached, self._due_cache = self._due_cache, None
        if cached is not None and cached[0] == tuple(queues):
            return cached[1]
        return await self._database.run(lambda db: self._next_due(db, queues))

    async def next_expiry(self) -> float | None:
        def read(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                "SELECT expires_at FROM messages WHERE expires_at IS NOT NULL AND lease IS NULL "
                "ORDER BY expires_at LIMIT 1"
            ).fetchone()
            return float(row[0]) if row else None

        return await self._database.run(read)

    async def purge(self, queue: str) -> int:
        return await self._database.run(write_transaction(lambda db: self._delete_ready(db, queue)))

    async def stats(self, queue: str) -> QueueStats:
        def read(db: sqlite3.Connection) -> QueueStats:
            now = time.time()
            (due,) = db.execute(
                "SELECT count(*) FROM messages WHERE queue=? AND lease IS NULL "
                "AND not_before IS NULL",
                (queue,),
            ).fetchone()
            (delayed,) = db.execute(
                "SELECT count(*) FROM messages WHERE queue=? AND not_before IS NOT NULL "
                "AND lease IS NULL",
                (queue,),
            ).fetchone()
            (unacked,) = db.execute(
                "SELECT count(*) FROM messages WHERE lease IS NOT NULL AND queue=?", (queue,)
            ).fetchone()
            (consumers,) = db.execute(
                "SELECT count(*) FROM consumers c JOIN connections k ON k.id = c.connection "
                "WHERE c.queue=? AND k.deadline >= ?",
                (queue, now),
            ).fetchone()
            return QueueStats(queue, int(due + delayed), int(unacked), int(consumers))

        return await self._database.run(read_transaction(read))

    # connections and consumers

    async def renew(self, connection: str, *, lease: float) -> bool:
        known = connection in self._registered

        def renew(db: sqlite3.Connection) -> bool:
            deadline = time.time() + lease
            if db.execute(
                "UPDATE connections SET deadline=? WHERE id=?", (deadline, connection)
            ).rowcount:
                return True
            db.execute(
                "INSERT INTO connections (id, deadline, pid) VALUES (?, ?, ?)",
                (connection, deadline, os.getpid()),
            )
            return not known

        alive = await self._database.run(write_transaction(renew))
        self._registered.add(connection)
        return alive

    @staticmethod
    def _disconnect(
        db: sqlite3.Connection, connection: str, now: float
    ) -> tuple[set[str], list[str]]:
        woken = {
            r[0]
            for r in db.execute(
                "UPDATE messages SET lease=NULL WHERE lease=? RETURNING queue", (connection,)
            )
        }
        queues = [
            r[0]
            for r in db.execute(
                "SELECT DISTINCT queue FROM consumers WHERE connection=?", (connection,)
            )
        ]
        db.execute("DELETE FROM consumers WHERE connection=?", (connection,))
        db.execute("DELETE FROM connections WHERE id=?", (connection,))
        return woken, [queue for queue in queues if SQLiteStorage._left_idle(db, queue, now)]

    @staticmethod
    def _left_idle(db: sqlite3.Connection, queue: str, now: float) -> bool:
        """Whether ``queue`` exists and has no consumer on a live connection."""
        live = db.execute(
            "SELECT 1 FROM consumers c JOIN connections k ON k.id = c.connection "
            "WHERE c.queue=? AND k.deadline >= ? LIMIT 1",
            (queue, now),
        ).fetchone()
        exists = db.execute("SELECT 1 FROM queues WHERE name=?", (queue,)).fetchone()
        return live is None and exists is not None

    async def disconnect(self, connection: str) -> list[str]:
        self._registered.discard(connection)

        def disconnect(db: sqlite3.Connection) -> tuple[set[str], list[str]]:
            return self._disconnect(db, connection, time.time())

        woken, idle = await self._database.run(write_transaction(disconnect))
        self._signal(woken)
        return idle

    async def reap(self) -> Reaped:
        def find(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT 1 FROM connections WHERE deadline < ? LIMIT 1", (time.time(),)
            ).fetchone()
            return row is not None

        if not await self._database.run(find):
            return Reaped()

        def reap(db: sqlite3.Connection) -> tuple[list[str], set[str], list[str]]:
            now = time.time()
            dead = [
                r[0] for r in db.execute("SELECT id FROM connections WHERE deadline < ?", (now,))
            ]
            woken: set[str] = set()
            idle: list[str] = []
            for connection in dead:
                w, i = self._disconnect(db, connection, now)
                woken |= w
                idle.extend(i)
            return dead, woken, idle

        dead, woken, idle = await self._database.run(write_transaction(reap))
        self._signal(woken)
        return Reaped(tuple(dead), tuple(dict.fromkeys(idle)))

    async def add_consumer(self, connection: str, tag: str, queues: Sequence[str]) -> None:
        def add(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO consumers (connection, tag, queue) VALUES (?, ?, ?)",
                [(connection, tag, q) for q in queues],
            )

        await self._database.run(write_transaction(add))

    async def remove_consumer(self, connection: str, tag: str) -> list[str]:
        def remove(db: sqlite3.Connection) -> list[str]:
            now = time.time()
            queues = [
                r[0]
                for r in db.execute(
                    "DELETE FROM consumers WHERE connection=? AND tag=? RETURNING queue",
                    (connection, tag),
                )
            ]
            idle = []
            for queue in queues:
                db.execute("UPDATE queues SET used_at=? WHERE name=?", (now, queue))
                if self._left_idle(db, queue, now):
                    idle.append(queue)
            return idle

        return await self._database.run(write_transaction(remove))

    async def activity(self, queues: Sequence[str]) -> dict[str, QueueActivity]:
        def read(db: sqlite3.Connection) -> dict[str, QueueActivity]:
            now = time.time()
            out: dict[str, QueueActivity] = {}
            for queue in queues:
                row = db.execute("SELECT used_at FROM queues WHERE name=?", (queue,)).fetchone()
                if row is None:
                    continue
                (consumers,) = db.execute(
                    "SELECT count(*) FROM consumers c JOIN connections k ON k.id = c.connection "
                    "WHERE c.queue=? AND k.deadline >= ?",
                    (queue, now),
                ).fetchone()
                out[queue] = QueueActivity(float(row[0]), int(consumers))
            return out

        return await self._database.run(read_transaction(read))

    async def listen(self, queues: Sequence[str]) -> Listener:
        waker = self._waker
        if waker is None:
            raise BrokerUnavailable(f"the SQLite broker {self.path} is not open")
        return waker.listen(queues)
