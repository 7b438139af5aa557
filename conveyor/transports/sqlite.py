"""``sqlite:///path/broker.db``: the embedded broker, shared by processes on one machine.

The virtual broker (:mod:`.virtual`) over a SQLite file in WAL mode. Every connection runs its
sqlite3 calls on a thread of its own, so the event loop never blocks on the disk. Writes are
transactions (``BEGIN IMMEDIATE``): a publish returns once its transaction committed, so a
confirmed message survives any process being killed at any moment (``synchronous=normal``,
the default, protects against process crashes; ``synchronous=full`` also against power loss).

Leases: each connection renews its lease every quarter ``lease`` (default 5 s); when a process
dies, the messages it held come back, redelivered, once its lease lapses.

Wake-ups: each waiting consumer binds a Unix datagram socket under ``<db>-wake/`` (or under the
temporary directory when that path would be too long for a socket), linked from one directory
per queue it consumes. A publisher sends a byte to the sockets of the queues it wrote to, right
after its commit, so an idle consumer wakes within a millisecond and costs no CPU while it waits;
``poll_interval`` (default 1 s) bounds the wait should a wake-up be lost.

URL forms: ``sqlite:///absolute/path/broker.db``, ``sqlite://relative/path/broker.db``; options
as query parameters or ``broker_transport_options``: ``lease``, ``poll_interval``,
``busy_timeout`` (seconds to wait for the write lock, default 30) and ``synchronous``
(``normal`` or ``full``). :func:`default_broker_url` names the default file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any, ClassVar, Self, TypeVar
from urllib.parse import unquote, urlsplit

import orjson

from conveyor.errors import BrokerUnavailable, ConfigurationError, ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, ExchangeType, FrozenMapping, Queue
from conveyor.routing.topology import BoundBinding, Topology
from conveyor.transports.base import Capabilities, DeliveryTag, QueueStats
from conveyor.transports.storage import (
    EventListener,
    Listener,
    NewMessage,
    QueueActivity,
    Reaped,
    StaleTopology,
    Storage,
    StoredMessage,
    TopologySnapshot,
)
from conveyor.transports.virtual import VirtualTransport, virtual_capabilities
from conveyor.urls import parse_options

__all__ = [
    "DEFAULT_DATABASE_NAME",
    "SCHEMA_VERSION",
    "SQLiteStorage",
    "SQLiteTransport",
    "database_path",
    "default_broker_url",
]

T = TypeVar("T")

SCHEMA_VERSION = 1
DEFAULT_DATABASE_NAME = "conveyor-broker.db"
# PRAGMA application_id marks the file as conveyor's broker ("CVYB").
_APPLICATION_ID = 0x43565942
_CHUNK = 500
_TOUCH_EVERY = 0.05
_SOCKET_PATH_MAX = 107

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS exchanges (name TEXT PRIMARY KEY, definition BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    definition BLOB NOT NULL,
    owner TEXT,
    max_length INTEGER,
    used_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS bindings (
    exchange TEXT NOT NULL,
    queue TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    arguments BLOB NOT NULL,
    PRIMARY KEY (exchange, queue, routing_key, arguments)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    not_before REAL,
    expires_at REAL,
    lease TEXT,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    envelope BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, priority DESC, id)
    WHERE lease IS NULL AND not_before IS NULL;
CREATE INDEX IF NOT EXISTS messages_delayed ON messages (queue, not_before)
    WHERE not_before IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_expiring ON messages (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_leased ON messages (lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS connections (
    id TEXT PRIMARY KEY,
    deadline REAL NOT NULL,
    pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS consumers (
    connection TEXT NOT NULL,
    tag TEXT NOT NULL,
    queue TEXT NOT NULL,
    PRIMARY KEY (connection, tag, queue)
);
CREATE INDEX IF NOT EXISTS consumers_queue ON consumers (queue);
"""

_MESSAGE_COLUMNS = (
    "id, queue, priority, delivery_count, expires_at, exchange, routing_key, envelope"
)


def default_broker_url(directory: str | os.PathLike[str] | None = None) -> str:
    """The broker URL used when none is configured: a file in ``directory`` (default: cwd)."""
    base = Path(directory) if directory is not None else Path.cwd()
    return f"sqlite://{(base / DEFAULT_DATABASE_NAME).absolute()}"


def database_path(url: str) -> Path:
    """The database file a ``sqlite://`` URL names; ConfigurationError if it names none.

    ``sqlite:///abs/path.db`` (and ``sqlite:////abs/path.db``) is absolute;
    ``sqlite://rel/path.db`` and ``sqlite:rel/path.db`` are relative to the working directory.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"not a sqlite:// URL: {url!r}")
    raw = unquote(parts.netloc + parts.path)
    if parts.path.startswith("//"):
        raw = "/" + parts.path.lstrip("/")
    example = "sqlite:///absolute/path/broker.db or sqlite://relative/broker.db"
    if not raw or raw in (":memory:", "/:memory:"):
        raise ConfigurationError(
            f"broker URL {url!r} names no database file: use {example} (memory:// for a "
            "broker inside one process)"
        )
    if raw.endswith("/"):
        raise ConfigurationError(f"broker URL {url!r} names a directory, not a file: use {example}")
    if "\x00" in raw:
        raise ConfigurationError(f"broker URL {url!r} contains a NUL character")
    return Path(raw).absolute()


def _encode_exchange(exchange: Exchange) -> bytes:
    return orjson.dumps(
        {
            "type": exchange.type.value,
            "durable": exchange.durable,
            "auto_delete": exchange.auto_delete,
            "arguments": dict(exchange.arguments),
        }
    )


def _decode_exchange(name: str, data: bytes) -> Exchange:
    d = orjson.loads(data)
    return Exchange(
        name,
        ExchangeType(d["type"]),
        durable=d["durable"],
        auto_delete=d["auto_delete"],
        arguments=FrozenMapping(d["arguments"]),
    )


def _encode_queue(queue: Queue) -> bytes:
    return orjson.dumps(
        {
            "durable": queue.durable,
            "exclusive": queue.exclusive,
            "auto_delete": queue.auto_delete,
            "arguments": dict(queue.arguments),
        }
    )


def _decode_queue(name: str, data: bytes) -> Queue:
    d = orjson.loads(data)
    return Queue(
        name,
        queue_arguments=FrozenMapping(d["arguments"]),
        durable=d["durable"],
        exclusive=d["exclusive"],
        auto_delete=d["auto_delete"],
    )


def _encode_binding_arguments(bound: BoundBinding) -> bytes:
    # sorted keys: equal arguments must find the same row when the binding is removed
    return orjson.dumps(dict(bound.arguments), option=orjson.OPT_SORT_KEYS)


def _decode_envelope(message_id: int, data: bytes) -> Envelope:
    try:
        return Envelope.from_bytes(data)
    except ProtocolError as exc:
        # Deliver what is there rather than lose it: the consumer sees the raw bytes and why.
        return Envelope(
            body=bytes(data),
            content_type="application/x-conveyor-undecodable",
            headers={"x-conveyor-error": f"stored message {message_id} is unreadable: {exc}"},
        )


def _stored(row: tuple[Any, ...]) -> StoredMessage:
    mid, queue, priority, count, expires_at, exchange, routing_key, data = row
    return StoredMessage(
        tag=mid,
        queue=queue,
        envelope=_decode_envelope(mid, data),
        exchange=exchange,
        routing_key=routing_key,
        priority=priority,
        delivery_count=count,
        expires_at=expires_at,
    )


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _wake_root(db: Path) -> Path:
    beside = Path(f"{db}-wake")
    # socket paths under it: <root>/q/<24 hex>/<id>, with ids of up to 40 characters
    if len(os.fsencode(beside)) + 70 <= _SOCKET_PATH_MAX:
        return beside
    digest = hashlib.sha1(os.fsencode(db.resolve())).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"conveyor-wake-{os.getuid()}" / digest


class _Waker:
    """Sends wake-ups to the sockets listening on queues of one database."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._listing: dict[str, tuple[int, list[str]]] = {}

    def queue_dir(self, queue: str) -> str:
        digest = hashlib.sha1(queue.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        return os.path.join(self.root, "q", digest)

    def _entries(self, directory: str) -> list[str]:
        try:
            st = os.stat(directory)
        except OSError:
            return []
        cached = self._listing.get(directory)
        # a directory changed within the last 100 ms may change again without a new mtime
        settled = time.time_ns() - st.st_mtime_ns > 100_000_000
        if cached is not None and cached[0] == st.st_mtime_ns and settled:
            return cached[1]
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        self._listing[directory] = (st.st_mtime_ns, names)
        return names

    def signal(self, queues: Iterable[str]) -> None:
        for queue in set(queues):
            directory = self.queue_dir(queue)
            for name in self._entries(directory):
                path = os.path.join(directory, name)
                try:
                    self._sender.sendto(b"!", path)
                except (BlockingIOError, InterruptedError):
                    pass  # its buffer is full: it has wake-ups waiting already
                except (ConnectionRefusedError, FileNotFoundError):
                    self._forget(path)
                except OSError:
                    pass

    def _forget(self, link: str) -> None:
        # the socket's process is gone: remove its link and the socket file
        with contextlib.suppress(OSError):
            target = os.readlink(link)
            os.unlink(link)
            os.unlink(target)

    def clean_stale(self) -> None:
        """Remove sockets of processes that no longer exist (names start with their pid)."""
        sockets = self.root / "s"
        try:
            names = os.listdir(sockets)
        except OSError:
            return
        for name in names:
            pid_text = name.split("-", 1)[0]
            if not pid_text.isdigit():
                continue
            try:
                os.kill(int(pid_text), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.unlink(sockets / name)
            except OSError:
                pass

    def close(self) -> None:
        self._sender.close()


class _SocketListener(EventListener):
    def __init__(self, waker: _Waker, queues: Sequence[str]) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        ident = f"{os.getpid()}-{uuid.uuid4().hex[:16]}"
        sockets = waker.root / "s"
        sockets.mkdir(parents=True, exist_ok=True)
        self._path = str(sockets / ident)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._links: list[str] = []
        try:
            self._sock.bind(self._path)
            self._sock.setblocking(False)
            for queue in queues:
                directory = waker.queue_dir(queue)
                os.makedirs(directory, exist_ok=True)
                link = os.path.join(directory, ident)
                os.symlink(self._path, link)
                self._links.append(link)
        except OSError as exc:
            self._remove_files()
            raise BrokerUnavailable(
                f"cannot create the wake-up socket under {waker.root}: {exc}"
            ) from exc
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
        self._event.set()

    def _remove_files(self) -> None:
        for path in [*self._links, self._path]:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._sock.close()

    def _stop_listening(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._sock.fileno())
        self._remove_files()


def _settle_future(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # the caller was cancelled
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _DatabaseThread:
    """The one thread that owns a connection's sqlite3 handle and runs its calls in order.

    Lighter than an executor (a call and its answer cost one queue put and one
    ``call_soon_threadsafe``); a daemon, so a transport never closed cannot hold the process
    open: an interrupted transaction is rolled back by SQLite, as after a crash.
    """

    def __init__(self, name: str) -> None:
        self._calls: SimpleQueue[
            tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop] | None
        ] = SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, future, loop = call
            try:
                outcome: tuple[Any, BaseException | None] = (fn(), None)
            except BaseException as exc:
                outcome = (None, exc)
            # a closed loop raises RuntimeError: nobody is waiting for the answer any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_future, future, *outcome)

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn`` on the thread; await the returned future for its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, future, loop))
        return future

    def stop(self) -> None:
        """Let the thread end once the calls already queued have run."""
        self._calls.put(None)


@dataclass(slots=True)
class _Enqueue:
    """One caller's :meth:`SQLiteStorage.enqueue`, waiting for the next group commit."""

    rows: list[tuple[Any, ...]]
    targets: set[str]
    topology_version: int
    connection: str
    settle: Sequence[DeliveryTag]
    future: asyncio.Future[list[StoredMessage]]


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(exc)
    return "locked" in text or "busy" in text


class SQLiteStorage(Storage):
    """Storage primitives on one SQLite file; one sqlite3 connection on a thread of its own."""

    def __init__(
        self, path: Path, *, busy_timeout: float = 30.0, synchronous: str = "normal"
    ) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._executor: _DatabaseThread | None = None
        self._db: sqlite3.Connection | None = None
        self._waker: _Waker | None = None
        self._registered: set[str] = set()
        self._touched: dict[str, float] = {}
        self._limits: tuple[int, dict[str, int]] | None = None
        self._enqueues: list[_Enqueue] = []
        self._due_cache: tuple[tuple[str, ...], float | None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._committing = False

    # the database thread

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise BrokerUnavailable(f"the SQLite broker {self.path} is not open")
        return await executor.run(lambda: self._call(fn))

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise BrokerUnavailable(f"the SQLite broker {self.path} is not open")
        try:
            return self._retry(lambda: fn(db))
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: sqlite3.Error) -> BrokerUnavailable:
        if _is_busy(exc):
            return BrokerUnavailable(
                f"the SQLite broker {self.path} stayed locked for over {self._busy_timeout}s "
                "(another process holds it): retry, or raise busy_timeout"
            )
        return BrokerUnavailable(f"the SQLite broker {self.path} failed: {exc}")

    def _retry(self, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.00005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
            # short pauses: the lock is held for tens of microseconds at a time, and SQLite's
            # own busy handler would sleep whole milliseconds
            time.sleep(pause)
            pause = min(pause * 1.5, 0.001)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
        def transaction(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return transaction

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
        def transaction(db: sqlite3.Connection) -> T:
            db.execute("BEGIN")
            try:
                return fn(db)
            finally:
                db.execute("COMMIT")

        return transaction

    # opening

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._check_path()
        executor = _DatabaseThread(f"conveyor-sqlite-{self.path.name}")
        try:
            self._db = await executor.run(self._connect)
        except BaseException:
            executor.stop()
            raise
        self._executor = executor
        self._waker = _Waker(_wake_root(self.path))
        self._waker.clean_stale()

    def _check_path(self) -> None:
        parent = self.path.parent
        if not parent.exists():
            raise ConfigurationError(
                f"cannot use SQLite broker {self.path}: directory {parent} does not exist; "
                "create it or point the broker URL elsewhere"
            )
        if not parent.is_dir():
            raise ConfigurationError(
                f"cannot use SQLite broker {self.path}: {parent} is not a directory"
            )
        if self.path.is_dir():
            raise ConfigurationError(
                f"cannot use SQLite broker {self.path}: it is a directory; name a file in it"
            )
        if not os.access(parent, os.W_OK | os.X_OK) or (
            self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK)
        ):
            raise ConfigurationError(
                f"cannot use SQLite broker {self.path}: no permission to write there; "
                "choose a writable path"
            )

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open SQLite broker {self.path}: {exc}") from exc
        try:
            self._retry(lambda: self._prepare(db))
        except ConfigurationError:
            db.close()
            raise
        except sqlite3.DatabaseError as exc:
            db.close()
            if _is_busy(exc):
                raise self._unavailable(exc) from exc
            if "not a database" in str(exc) or "encrypted" in str(exc):
                raise ConfigurationError(
                    f"{self.path} is not a conveyor broker database (not SQLite at all); "
                    "it was left untouched: point the broker URL at another file"
                ) from exc
            raise BrokerUnavailable(
                f"cannot open SQLite broker {self.path}: {exc}; the file may be damaged"
            ) from exc
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        # One read transaction: another process creating the schema at this moment is seen
        # before or after its commit, never half way (an empty application id beside tables).
        db.execute("BEGIN")
        try:
            self._check_identity(db)
        finally:
            db.execute("COMMIT")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise BrokerUnavailable(
                f"SQLite broker {self.path} cannot use WAL mode (got {mode!r}): put it on a "
                "local file system"
            )
        db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._check_identity(db) == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?), "
                    "('topology_version', 0)",
                    (SCHEMA_VERSION,),
                )
                db.execute(f"PRAGMA application_id={_APPLICATION_ID}")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _check_identity(self, db: sqlite3.Connection) -> int:
        """The schema version of the file (0 for an empty file); raise for a foreign one."""
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id == 0 and not tables:
            return 0
        if app_id != _APPLICATION_ID or "meta" not in tables:
            raise ConfigurationError(
                f"{self.path} is a SQLite database of another application, not a conveyor "
                "broker; it was left untouched: point the broker URL at another file"
            )
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"{self.path} was created by a newer conveyor (broker schema {version}, this "
                f"one knows up to {SCHEMA_VERSION}); it was left untouched: upgrade conveyor"
            )
        if version < 1:
            raise ConfigurationError(
                f"{self.path} has no conveyor schema version; it was left untouched"
            )
        return version

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                await executor.run(db.close)
        executor.stop()
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
                _decode_exchange(n, d)
                for n, d in db.execute("SELECT name, definition FROM exchanges")
            ]
            queues: list[Queue] = []
            owners: dict[str, str] = {}
            for name, data, owner in db.execute("SELECT name, definition, owner FROM queues"):
                queues.append(_decode_queue(name, data))
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

        return await self._run(self._read(load))

    async def topology_version(self) -> int:
        def read(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT value FROM meta WHERE key='topology_version'").fetchone()
            return int(row[0])

        return await self._run(read)

    @staticmethod
    def _bump(db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = value + 1 WHERE key='topology_version'")

    async def add_exchange(self, exchange: Exchange) -> Exchange:
        data = _encode_exchange(exchange)

        def add(db: sqlite3.Connection) -> Exchange:
            row = db.execute(
                "SELECT definition FROM exchanges WHERE name=?", (exchange.name,)
            ).fetchone()
            if row is not None:
                return _decode_exchange(exchange.name, row[0])
            db.execute(
                "INSERT INTO exchanges (name, definition) VALUES (?, ?)", (exchange.name, data)
            )
            self._bump(db)
            return exchange

        return await self._run(self._write(add))

    async def remove_exchange(self, name: str) -> None:
        def remove(db: sqlite3.Connection) -> None:
            if db.execute("DELETE FROM exchanges WHERE name=?", (name,)).rowcount:
                db.execute("DELETE FROM bindings WHERE exchange=?", (name,))
                self._bump(db)

        await self._run(self._write(remove))

    async def add_queue(
        self, queue: Queue, *, owner: str | None = None
    ) -> tuple[Queue, str | None]:
        data = _encode_queue(queue)
        max_length = queue.arguments.get("x-max-length")

        def add(db: sqlite3.Connection) -> tuple[Queue, str | None]:
            now = time.time()
            row = db.execute(
                "SELECT definition, owner FROM queues WHERE name=?", (queue.name,)
            ).fetchone()
            if row is not None:
                db.execute("UPDATE queues SET used_at=? WHERE name=?", (now, queue.name))
                return _decode_queue(queue.name, row[0]), row[1]
            db.execute(
                "INSERT INTO queues (name, definition, owner, max_length, used_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (queue.name, data, owner, max_length, now),
            )
            self._bump(db)
            return queue, owner

        return await self._run(self._write(add))

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

        removed = await self._run(self._write(remove))
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
        args = _encode_binding_arguments(bound)

        def add(db: sqlite3.Connection) -> None:
            if db.execute(
                "INSERT OR IGNORE INTO bindings (exchange, queue, routing_key, arguments) "
                "VALUES (?, ?, ?, ?)",
                (bound.exchange, bound.queue, bound.routing_key, args),
            ).rowcount:
                self._bump(db)

        await self._run(self._write(add))

    async def remove_binding(self, bound: BoundBinding) -> None:
        args = _encode_binding_arguments(bound)

        def remove(db: sqlite3.Connection) -> None:
            if db.execute(
                "DELETE FROM bindings WHERE exchange=? AND queue=? AND routing_key=? "
                "AND arguments=?",
                (bound.exchange, bound.queue, bound.routing_key, args),
            ).rowcount:
                self._bump(db)

        await self._run(self._write(remove))

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
        self,
        messages: Sequence[NewMessage],
        *,
        topology_version: int,
        connection: str,
        settle: Sequence[DeliveryTag] = (),
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
        request = _Enqueue(rows, targets, topology_version, connection, settle, future)
        if self._committing:
            self._enqueues.append(request)  # joins the next group commit
            return await future
        # nothing in flight: commit this one at once, without a trip through a task
        self._committing = True
        try:
            work = self._write_then_signal(self._enqueue_all([request]), targets)
            (result,) = await self._run(work)
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
                results = await self._run(work)
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
                    _stored(r)
                    for r in db.execute(
                        "UPDATE messages SET lease=? WHERE id IN (SELECT id FROM messages "
                        "WHERE queue=? AND lease IS NULL AND not_before IS NULL ORDER BY "
                        f"priority DESC, id LIMIT ?) RETURNING {_MESSAGE_COLUMNS}",
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
        transaction = self._write(fn)

        def run(db: sqlite3.Connection) -> T:
            result = transaction(db)
            self._signal(queues)
            return result

        return run

    async def dequeue(
        self,
        queues: Sequence[str],
        *,
        connection: str,
        limit: int,
        ack: Sequence[DeliveryTag] = (),
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
                    f"NULL ORDER BY priority DESC, id LIMIT ?) RETURNING {_MESSAGE_COLUMNS}",
                    (connection, queue, limit - len(taken)),
                ).fetchall()
                rows.sort(key=lambda r: (-r[2], r[0]))
                taken.extend(_stored(r) for r in rows)
                if len(taken) >= limit:
                    break
            if touch:
                db.execute(
                    f"UPDATE queues SET used_at=? WHERE name IN ({_marks(len(touch))})",
                    (now, *touch),
                )
            return taken

        write = self._write(dequeue)
        probe = not ack and not touch
        key = tuple(queues)

        def probe_then_dequeue(db: sqlite3.Connection) -> list[StoredMessage]:
            if probe and not self._any_ready(db, queues):
                # nothing to take: spare the write lock, and answer the next_due call that
                # follows (anything published after this read wakes the listener anyway)
                self._due_cache = (key, self._next_due(db, queues))
                return []
            return write(db)

        return await self._run(probe_then_dequeue)

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
                f"ORDER BY expires_at LIMIT ?) RETURNING {_MESSAGE_COLUMNS}",
                (connection, time.time(), limit),
            ).fetchall()
            return [_stored(r) for r in rows]

        return await self._run(self._write(claim))

    async def ack(self, tags: Sequence[DeliveryTag], *, connection: str) -> int:
        if not tags:
            return 0
        return await self._run(self._write(lambda db: self._settle(db, tags, connection)))

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

        released = await self._run(self._write(release))
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
        return await self._run(lambda db: self._next_due(db, queues))

    async def next_expiry(self) -> float | None:
        def read(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                "SELECT expires_at FROM messages WHERE expires_at IS NOT NULL AND lease IS NULL "
                "ORDER BY expires_at LIMIT 1"
            ).fetchone()
            return float(row[0]) if row else None

        return await self._run(read)

    async def purge(self, queue: str) -> int:
        return await self._run(self._write(lambda db: self._delete_ready(db, queue)))

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

        return await self._run(self._read(read))

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

        alive = await self._run(self._write(renew))
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
        idle = []
        for queue in queues:
            live = db.execute(
                "SELECT 1 FROM consumers c JOIN connections k ON k.id = c.connection "
                "WHERE c.queue=? AND k.deadline >= ? LIMIT 1",
                (queue, now),
            ).fetchone()
            exists = db.execute("SELECT 1 FROM queues WHERE name=?", (queue,)).fetchone()
            if live is None and exists is not None:
                idle.append(queue)
        return woken, idle

    async def disconnect(self, connection: str) -> list[str]:
        self._registered.discard(connection)

        def disconnect(db: sqlite3.Connection) -> tuple[set[str], list[str]]:
            return self._disconnect(db, connection, time.time())

        woken, idle = await self._run(self._write(disconnect))
        self._signal(woken)
        return idle

    async def reap(self) -> Reaped:
        def find(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT 1 FROM connections WHERE deadline < ? LIMIT 1", (time.time(),)
            ).fetchone()
            return row is not None

        if not await self._run(find):
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

        dead, woken, idle = await self._run(self._write(reap))
        self._signal(woken)
        return Reaped(tuple(dead), tuple(dict.fromkeys(idle)))

    async def add_consumer(self, connection: str, tag: str, queues: Sequence[str]) -> None:
        def add(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO consumers (connection, tag, queue) VALUES (?, ?, ?)",
                [(connection, tag, q) for q in queues],
            )

        await self._run(self._write(add))

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
                live = db.execute(
                    "SELECT 1 FROM consumers c JOIN connections k ON k.id = c.connection "
                    "WHERE c.queue=? AND k.deadline >= ? LIMIT 1",
                    (queue, now),
                ).fetchone()
                exists = db.execute("SELECT 1 FROM queues WHERE name=?", (queue,)).fetchone()
                if live is None and exists is not None:
                    idle.append(queue)
            return idle

        return await self._run(self._write(remove))

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

        return await self._run(self._read(read))

    async def listen(self, queues: Sequence[str]) -> Listener:
        waker = self._waker
        if waker is None:
            raise BrokerUnavailable(f"the SQLite broker {self.path} is not open")
        return _SocketListener(waker, queues)


_OPTIONS: dict[str, tuple[type, Any]] = {
    "lease": (float, 5.0),
    "poll_interval": (float, 1.0),
    "busy_timeout": (float, 30.0),
    "synchronous": (str, "normal"),
}


class SQLiteTransport(VirtualTransport):
    """The embedded broker on a SQLite file; see the module docstring."""

    capabilities: ClassVar[Capabilities] = virtual_capabilities(shared=True)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> Self:
        path = database_path(url)
        values = parse_options(url, options or {}, _OPTIONS)
        synchronous = str(values["synchronous"]).lower()
        if synchronous not in ("normal", "full"):
            raise ConfigurationError(
                f"option 'synchronous' of broker URL {url!r} must be 'normal' or 'full', "
                f"got {values['synchronous']!r}"
            )
        storage = SQLiteStorage(path, busy_timeout=values["busy_timeout"], synchronous=synchronous)
        return cls(url, storage, lease=values["lease"], poll_interval=values["poll_interval"])
