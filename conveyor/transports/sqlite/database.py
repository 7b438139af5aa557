"""A conveyor SQLite file, opened: one sqlite3 connection running its calls on a thread of its own.

Both the SQLite broker and the SQLite result backend go through :class:`Database`, so they
open, check, lock and fail alike. Opening checks the path, refuses a file that is not
conveyor's (see :mod:`.schema`) and creates the schema in an empty one, and puts the file in WAL
mode. Every call runs on the database's thread, so the event loop never blocks on the disk, and
is retried while another process holds the write lock, for up to ``busy_timeout`` seconds, with
pauses far shorter than SQLite's own busy handler would take. sqlite3 errors come out as
BrokerUnavailable.

Storage faults (:mod:`.file_faults`): a new file is created ``0600`` (``file_mode``); a full
disk is waited out (logged once, retried with backoff until there is space or the database is
closed); once the path no longer names the file opened (deleted, replaced), every call raises
FileMoved, so nothing more is confirmed into a file no other process will read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from queue import SimpleQueue
from typing import Any, TypeVar

from conveyor.errors import BrokerUnavailable, ConfigurationError
from conveyor.transports.sqlite.file_faults import (
    DEFAULT_FILE_MODE,
    FileIdentity,
    create_private,
    is_full,
)
from conveyor.transports.sqlite.schema import check_identity, create_schema

__all__ = [
    "Database",
    "DatabaseThread",
    "is_busy",
    "read_transaction",
    "write_transaction",
]

T = TypeVar("T")

log = logging.getLogger("conveyor.transports")

# Pauses while the disk is full: short at first (space may come back at once), then 1 s.
_FULL_PAUSE_FIRST, _FULL_PAUSE_MAX = 0.05, 1.0


def _settle_future(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # the caller was cancelled
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class DatabaseThread:
    """The one thread that owns a connection's sqlite3 handle and runs its calls in order.

    Lighter than an executor (a call and its answer cost one queue put and one
    ``call_soon_threadsafe``); a daemon, so a database never closed cannot hold the process
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


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says another connection holds a lock (worth retrying)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(exc)
    return "locked" in text or "busy" in text


def write_transaction(fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """``fn`` as one write transaction (``BEGIN IMMEDIATE``), rolled back if it raises."""

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


def read_transaction(fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """``fn`` as one read transaction: every statement sees the same snapshot."""

    def transaction(db: sqlite3.Connection) -> T:
        db.execute("BEGIN")
        try:
            return fn(db)
        finally:
            db.execute("COMMIT")

    return transaction


class Database:
    """A conveyor SQLite file and the one sqlite3 connection to it of this object.

    ``what`` names the file in error messages ("SQLite broker", "SQLite result store").
    Belongs to no event loop: each :meth:`run` answers on the loop that called it.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float = 30.0,
        synchronous: str = "normal",
        what: str = "SQLite broker",
        file_mode: int = DEFAULT_FILE_MODE,
    ) -> None:
        self.path = path
        self.what = what
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._file_mode = file_mode
        self._thread: DatabaseThread | None = None
        self._db: sqlite3.Connection | None = None
        self._identity: FileIdentity | None = None
        self._closing = False

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run ``fn(connection)`` on the database's thread, retried while the file is locked;
        await the returned future for its result. BrokerUnavailable if the database is not
        open (raised here) or the call fails (from the future)."""
        thread = self._thread
        if thread is None:
            raise BrokerUnavailable(f"the {self.what} {self.path} is not open")
        return thread.run(lambda: self._call(fn))

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        identity = self._identity
        if db is None or identity is None:
            raise BrokerUnavailable(f"the {self.what} {self.path} is not open")
        full_since: float | None = None
        pause = _FULL_PAUSE_FIRST
        while True:
            try:
                result = self._retry(lambda: fn(db))
            except sqlite3.Error as exc:
                identity.check()
                if not is_full(exc) or self._closing:
                    raise self._unavailable(exc) from exc
                if db.in_transaction:  # a failed COMMIT can leave it open
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                if full_since is None:
                    full_since = time.monotonic()
                    log.warning(
                        "the %s %s: the disk is full (%s); waiting for space, retrying every "
                        "%g s at most",
                        self.what,
                        self.path,
                        exc,
                        _FULL_PAUSE_MAX,
                    )
                time.sleep(pause)
                pause = min(pause * 2, _FULL_PAUSE_MAX)
                continue
            identity.check()  # committed into a file that was deleted meanwhile: say so
            if full_since is not None:
                log.warning(
                    "the %s %s has space again after %.1f s; carrying on",
                    self.what,
                    self.path,
                    time.monotonic() - full_since,
                )
            return result

    def _unavailable(self, exc: sqlite3.Error) -> BrokerUnavailable:
        if is_busy(exc):
            return BrokerUnavailable(
                f"the {self.what} {self.path} stayed locked for over {self._busy_timeout:g} s "
                "(another process holds it): retry, or raise busy_timeout"
            )
        return BrokerUnavailable(f"the {self.what} {self.path} failed: {exc}")

    def _retry(self, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.00005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() > deadline:
                    raise
            # short pauses: the lock is held for tens of microseconds at a time, and SQLite's
            # own busy handler would sleep whole milliseconds
            time.sleep(pause)
            pause = min(pause * 1.5, 0.001)

    async def open(self) -> None:
        """Open the file, creating it and its schema if needed (idempotent).

        ConfigurationError for an unusable path or a file that is not conveyor's (left
        untouched); BrokerUnavailable when it cannot be opened or stays locked.
        """
        if self._thread is not None:
            return
        self._check_path()
        self._closing = False
        thread = DatabaseThread(f"conveyor-sqlite-{self.path.name}")
        try:
            self._db = await thread.run(self._connect)
        except BaseException:
            thread.stop()
            raise
        self._thread = thread

    def _check_path(self) -> None:
        parent = self.path.parent
        where = f"cannot use {self.what} {self.path}"
        if not parent.exists():
            raise ConfigurationError(
                f"{where}: directory {parent} does not exist; create it or point the URL elsewhere"
            )
        if not parent.is_dir():
            raise ConfigurationError(f"{where}: {parent} is not a directory")
        if self.path.is_dir():
            raise ConfigurationError(f"{where}: it is a directory; name a file in it")
        if not os.access(parent, os.W_OK | os.X_OK) or (
            self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK)
        ):
            raise ConfigurationError(
                f"{where}: no permission to write there; choose a writable path"
            )

    def _connect(self) -> sqlite3.Connection:
        try:
            create_private(self.path, self._file_mode)
            self._identity = FileIdentity(self.path, self.what)
        except OSError as exc:
            raise ConfigurationError(f"cannot create {self.what} {self.path}: {exc}") from exc
        try:
            db = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open {self.what} {self.path}: {exc}") from exc
        try:
            self._retry(lambda: self._prepare(db))
        except ConfigurationError:
            db.close()
            raise
        except sqlite3.DatabaseError as exc:
            db.close()
            if is_busy(exc):
                raise self._unavailable(exc) from exc
            if "not a database" in str(exc) or "encrypted" in str(exc):
                raise ConfigurationError(
                    f"{self.path} is not a conveyor broker database (not SQLite at all); "
                    "it was left untouched: point the URL at another file"
                ) from exc
            raise BrokerUnavailable(
                f"cannot open {self.what} {self.path}: {exc}; the file may be damaged"
            ) from exc
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        # One read transaction: another process creating the schema at this moment is seen
        # before or after its commit, never half way (an empty application id beside tables).
        read_transaction(lambda db: check_identity(db, self.path))(db)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise BrokerUnavailable(
                f"{self.what} {self.path} cannot use WAL mode (got {mode!r}): put it on a "
                "local file system"
            )
        db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        db.execute("PRAGMA foreign_keys=OFF")

        def create(db: sqlite3.Connection) -> None:
            if check_identity(db, self.path) == 0:
                create_schema(db)

        write_transaction(create)(db)

    async def close(self) -> None:
        """Close the connection once the calls already queued have run (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._closing = True  # a call waiting for disk space gives up
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                await thread.run(db.close)
        thread.stop()
