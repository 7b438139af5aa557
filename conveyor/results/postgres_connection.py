"""The PostgreSQL result backend's link to the database: URL, pool, retries, errors, schema.

One :class:`PgConnection` per backend: a psycopg 3 ``AsyncConnectionPool`` for reads and writes,
the URL's options, and the one place psycopg's exceptions become conveyor's. Every statement
goes through :meth:`PgConnection.run`, which retries a lost or refused connection with
exponential backoff until ``reconnect_timeout`` seconds have passed (PostgreSQL restarting), then
raises BrokerUnavailable. A database that refuses the connection for good (bad password, unknown
role or database, no ``pg_hba.conf`` entry) is a ConfigurationError at once. Every message names
the URL with its password hidden.

The schema (tables, indexes) is created on first use under an advisory lock, and its version is
checked on every start: a newer schema, written by a newer conveyor, is refused, never altered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from conveyor.errors import BrokerUnavailable, ConfigurationError, ConveyorError
from conveyor.results.postgres_chords import chord_schema
from conveyor.urls import parse_options, redacted

__all__ = ["SCHEMA_VERSION", "PgConnection", "PgOptions", "is_refusal", "split_pg_url"]

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 1
"""The version of the tables this conveyor writes; a database holding a newer one is refused."""

_OPTIONS: dict[str, tuple[type, Any]] = {
    "table": (str, "conveyor_results"),
    "pool_size": (int, 10),
    "reconnect_timeout": (float, 60.0),
    "connect_timeout": (float, 10.0),
}
# Server answers that no retry can change: the URL or the server's configuration must.
_REFUSALS = (
    "password authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "authentication failed",
)
_MAX_BACKOFF = 2.0


@dataclass(frozen=True, slots=True)
class PgOptions:
    """The backend's own URL options (the rest of the query goes to libpq)."""

    table: str
    pool_size: int
    reconnect_timeout: float
    connect_timeout: float


def split_pg_url(url: str) -> tuple[str, PgOptions]:
    """(libpq conninfo URL, conveyor's options) from a ``postgresql://`` result backend URL.

    ConfigurationError for an unknown conveyor option, a bad value, or a table name that is not
    a plain SQL identifier.
    """
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        (ours.__setitem__(name, value) if name in _OPTIONS else theirs.append((name, value)))
    values = parse_options(
        parts._replace(query=urlencode(ours)).geturl(), {}, _OPTIONS, what="result backend URL"
    )
    table = values["table"]
    if not table.isidentifier() or not table.isascii() or len(table) > 50:
        raise ConfigurationError(
            f"result backend {redacted(url)}: table={table!r} must be a plain SQL name "
            "(letters, digits, _; at most 50 characters)"
        )
    if values["pool_size"] < 1:
        raise ConfigurationError(f"result backend {redacted(url)}: pool_size must be 1 or more")
    scheme = "postgresql"
    conninfo = parts._replace(scheme=scheme, query=urlencode(theirs)).geturl()
    return conninfo, PgOptions(**values)


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the server refusing this URL for good (not a restart or outage)."""
    text = str(exc)
    return isinstance(exc, psycopg.OperationalError) and any(r in text for r in _REFUSALS)


def _schema_sql(table: str) -> list[sql.Composed]:
    t = sql.Identifier(table)
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " task_id TEXT NOT NULL,"
            " worker TEXT NOT NULL,"
            " state TEXT NOT NULL,"
            " date_done DOUBLE PRECISION,"
            " meta TEXT NOT NULL,"
            " PRIMARY KEY (task_id, worker))"
        ).format(t),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (date_done)").format(
            sql.Identifier(f"{table}_done"), t
        ),
        *chord_schema(table),
    ]


class PgConnection:
    """A pool of connections to one database, with retries and error mapping (see module)."""

    def __init__(self, url: str, conninfo: str, options: PgOptions, *, what: str) -> None:
        self.url = url
        self.conninfo = conninfo
        self.options = options
        self.what = what
        self._pool: AsyncConnectionPool | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def shown(self) -> str:
        """The URL to print: password hidden."""
        return redacted(self.url)

    def refused(self, exc: BaseException) -> ConfigurationError:
        """The error for a server refusing this URL (see :func:`is_refusal`)."""
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.replace(self.conninfo, self.shown)
        return ConfigurationError(
            f"{self.what} {self.shown}: PostgreSQL refused the connection ({reason}); "
            "check the user, password and database name in the URL"
        )

    async def connect_one(self, *, application_name: str, autocommit: bool) -> Any:
        """One new connection of its own (the listener's); raises as :meth:`run` does."""
        return await self.retrying(
            lambda: psycopg.AsyncConnection.connect(
                self.conninfo,
                autocommit=autocommit,
                application_name=application_name,
                connect_timeout=max(1, round(self.options.connect_timeout)),
            ),
            "connecting",
        )

    async def open(self) -> None:
        """Open the pool and create or check the schema (idempotent)."""
        async with self._lock:
            if self._pool is not None:
                return
            if self._closed:
                raise BrokerUnavailable(f"{self.what} {self.shown} is closed")
            # One plain connection first: a refusal then says why (a pool only times out).
            first = await self.connect_one(application_name="conveyor-results", autocommit=False)
            try:
                await self._create_schema(first)
            finally:
                await first.close()
            pool = AsyncConnectionPool(
                self.conninfo,
                min_size=1,
                max_size=self.options.pool_size,
                kwargs={"application_name": "conveyor-results", "autocommit": False},
                check=AsyncConnectionPool.check_connection,
                reconnect_timeout=self.options.reconnect_timeout,
                open=False,
                name=f"conveyor-results-{id(self):x}",
            )
            await pool.open(wait=False)
            self._pool = pool

    async def _create_schema(self, conn: Any) -> None:
        table = self.options.table
        async with conn.transaction():
            # Serializes creators: CREATE ... IF NOT EXISTS races on the catalog otherwise.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"conveyor:{table}",))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS conveyor_schema ("
                " name TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            cur = await conn.execute(
                "SELECT version FROM conveyor_schema WHERE name = %s", (table,)
            )
            row = await cur.fetchone()
            if row is not None and row[0] > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"{self.what} {self.shown}: table {table!r} has schema version {row[0]}, "
                    f"newer than this conveyor's ({SCHEMA_VERSION}); upgrade conveyor (the "
                    "tables are left untouched)"
                )
            for statement in _schema_sql(table):
                await conn.execute(statement)
            if row is None:
                await conn.execute(
                    "INSERT INTO conveyor_schema (name, version) VALUES (%s, %s)",
                    (table, SCHEMA_VERSION),
                )

    async def close(self) -> None:
        """Close the pool (idempotent); later calls raise BrokerUnavailable."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def retrying(self, step: Callable[[], Awaitable[T]], doing: str) -> T:
        """``step()``, retried with backoff while the database is unreachable, at most
        ``reconnect_timeout`` seconds; conveyor errors only (see module)."""
        deadline = time.monotonic() + self.options.reconnect_timeout
        delay = 0.05
        while True:
            try:
                return await step()
            except ConveyorError:
                raise
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if is_refusal(exc):
                    raise self.refused(exc) from exc
                if self._closed or time.monotonic() + delay > deadline:
                    raise BrokerUnavailable(
                        f"{self.what} {self.shown}: {doing} failed for "
                        f"{self.options.reconnect_timeout:g} s: {str(exc).strip()}; "
                        "is PostgreSQL running?"
                    ) from exc
                log.warning("%s %s: %s failed (%s); retrying", self.what, self.shown, doing, exc)
            except psycopg.ProgrammingError as exc:
                if exc.sqlstate is None:  # libpq refused the URL itself (a bad parameter)
                    raise ConfigurationError(
                        f"{self.what} {self.shown}: {str(exc).strip()}; "
                        "check the URL's query parameters"
                    ) from exc
                raise BrokerUnavailable(f"{self.what} {self.shown}: {doing} failed: {exc}") from exc
            except psycopg.Error as exc:
                raise BrokerUnavailable(f"{self.what} {self.shown}: {doing} failed: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        if self._pool is None:
            await self.open()
        pool = self._pool
        if pool is None:
            raise BrokerUnavailable(f"{self.what} {self.shown} is closed")
        async with (
            pool.connection(timeout=self.options.connect_timeout) as conn,
            conn.transaction(),
        ):
            yield conn

    async def run(self, fn: Callable[[Any], Awaitable[T]], doing: str) -> T:
        """``await fn(connection)`` in one transaction, retried as a whole (so ``fn`` must be
        safe to repeat) while the database is unreachable."""

        async def once() -> T:
            async with self._transaction() as conn:
                return await fn(conn)

        return await self.retrying(once, doing)
