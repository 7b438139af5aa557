"""One pipelined connection to Redis, shared by every caller of an event loop."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.connection import AbstractConnection

from conveyor.transports.redis.client import LOST

__all__ = ["RedisLink"]


class RedisLink:
    """One connection with commands pipelined on it, shared by every caller of an event loop.

    Each call writes its command at once and gets the reply matched to it in order, so
    concurrent callers share one socket with no pool and no lock (redis-py's client spends more
    on its pool and wrappers than Redis spends on the command). A reply that does not come
    within ``timeout`` seconds, or a lost connection, fails every pending call with a
    redis-py connection error (for :func:`run` to retry) and the next call reconnects.
    """

    def __init__(self, client: aioredis.Redis, *, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._conn: AbstractConnection | None = None
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[AbstractConnection] | None = None
        self._shas: dict[str, str] = {}
        self._closed = False

    async def _connection(self) -> AbstractConnection:
        conn = self._conn
        if conn is not None and conn.is_connected:
            return conn
        if self._closed:
            raise rexc.ConnectionError("the connection to Redis was closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> AbstractConnection:
        try:
            pool = self._client.connection_pool
            conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.connect()  # type: ignore[no-untyped-call]
            except BaseException:
                await conn.disconnect(nowait=True)
                raise
            waiters: deque[asyncio.Future[Any]] = deque()
            self._conn, self._waiters = conn, waiters
            self._reader = asyncio.get_running_loop().create_task(
                self._read(conn, waiters), name="conveyor-redis-link"
            )
            return conn
        finally:
            self._connecting = None

    async def _read(self, conn: AbstractConnection, waiters: deque[asyncio.Future[Any]]) -> None:
        error: BaseException = rexc.ConnectionError("the connection to Redis was closed")
        try:
            while True:
                try:
                    reply = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
                except rexc.ResponseError as exc:
                    if waiters:
                        fut = waiters.popleft()
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                if waiters:
                    fut = waiters.popleft()
                    if not fut.done():
                        fut.set_result(reply)
        except (*LOST, rexc.RedisError) as exc:
            error = exc if isinstance(exc, LOST) else rexc.ConnectionError(str(exc))
        finally:
            self._drop(conn, waiters, error)

    def _drop(
        self, conn: AbstractConnection, waiters: deque[asyncio.Future[Any]], error: BaseException
    ) -> None:
        """Close ``conn`` and fail the calls waiting on it (idempotent)."""
        if self._conn is conn:
            self._conn = None
            reader, self._reader = self._reader, None
            if reader is not None and reader is not asyncio.current_task():
                reader.cancel()
        conn._close()  # type: ignore[no-untyped-call]
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_exception(rexc.ConnectionError(str(error) or type(error).__name__))

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply (ResponseError for an error reply)."""
        conn = await self._connection()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiters = self._waiters
        waiters.append(fut)
        writer = conn._writer
        if writer is None:
            self._drop(conn, waiters, rexc.ConnectionError("connection lost while sending"))
        else:
            writer.writelines(conn.pack_command(*args))
        try:
            async with asyncio.timeout(self._timeout):
                return await fut
        except TimeoutError:
            error = rexc.TimeoutError(f"no reply from Redis within {self._timeout:g} s")
            self._drop(conn, waiters, error)
            raise error from None

    async def run_script(self, source: str, args: Sequence[Any]) -> Any:
        """EVALSHA ``source`` (loading it on first use or after a SCRIPT FLUSH) with ``args``."""
        sha = self._shas.get(source)
        if sha is not None:
            try:
                return await self.execute("EVALSHA", sha, 0, *args)
            except rexc.NoScriptError:
                pass
        sha = await self.execute("SCRIPT", "LOAD", source)
        self._shas[source] = sha.decode() if isinstance(sha, bytes) else str(sha)
        return await self.execute("EVALSHA", self._shas[source], 0, *args)

    async def close(self) -> None:
        """Disconnect; pending calls fail (idempotent)."""
        self._closed = True
        conn = self._conn
        if conn is not None:
            self._drop(conn, self._waiters, rexc.ConnectionError("the Redis link was closed"))
