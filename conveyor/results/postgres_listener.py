"""One LISTEN connection per process and event loop, shared by every waiter of a database.

Writers ``NOTIFY`` the table's channel with the task ids they stored, in the transaction that
stores them (PostgreSQL delivers it on commit). :class:`Listener` holds one connection that
``LISTEN``\\s on that channel and wakes the :class:`~conveyor.results.waiters.Waiters` watching
those ids: thousands of waiters cost one connection and one dict lookup per notification.
Backends of the same database and table on the same event loop share one listener
(:func:`acquire` / :func:`release`, counted).

If the connection is lost (PostgreSQL restarting), the listener reconnects with backoff,
listens again, and then wakes every waiter: each reads its result again, so a result stored
while nobody listened is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg
from psycopg import sql

from conveyor.errors import BrokerUnavailable, ConveyorError
from conveyor.results.postgres_connection import PgConnection
from conveyor.results.waiters import Waiters

__all__ = ["Listener", "acquire", "release"]

log = logging.getLogger(__name__)

# keyed by the loop itself, not its id: a closed loop's id may be reused by the next one
_listeners: dict[tuple[asyncio.AbstractEventLoop, str, str], Listener] = {}


class Listener:
    """The LISTEN connection for one channel (see module); belongs to one event loop."""

    def __init__(self, connection: PgConnection, channel: str) -> None:
        self.connection = connection
        self.channel = channel
        self.waiters = Waiters()
        self.users = 0
        self._ready: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def started(self) -> None:
        """Return once LISTEN is in effect (starting the listener on first call)."""
        loop = asyncio.get_running_loop()
        if self._ready is None or (self._ready.done() and self._ready.exception() is not None):
            self._ready = loop.create_future()
            self._task = loop.create_task(self._listen(self._ready))
        await asyncio.shield(self._ready)

    async def _connect(self) -> Any:
        conn = await self.connection.connect_one(
            application_name="conveyor-results-listen", autocommit=True
        )
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        return conn

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        try:
            conn = await self._connect()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else BrokerUnavailable(""))
            ready.exception()  # retrieved here: whoever awaits it sees it too
            return
        ready.set_result(None)
        try:
            while not self._closed:
                try:
                    async for notify in conn.notifies():
                        for task_id in notify.payload.split("\n"):
                            self.waiters.wake(task_id)
                except psycopg.Error as exc:
                    log.warning("result listener on %s lost: %s; reconnecting", self.channel, exc)
                with contextlib.suppress(Exception):
                    await conn.close()
                if self._closed:
                    return
                try:
                    conn = await self._reconnect()
                except ConveyorError as exc:
                    log.error("result listener on %s: %s", self.channel, exc)
                    self._closed = True
                    self.waiters.wake_all()
                    return
                # Listening again: whatever was stored meanwhile is found by reading again.
                self.waiters.wake_all()
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _reconnect(self) -> Any:
        """A new listening connection, however long the database stays away (waiters may wait
        for ever); a refusal (ConfigurationError) ends it."""
        while True:
            try:
                return await self._connect()
            except BrokerUnavailable as exc:
                log.warning("result listener on %s: %s; still trying", self.channel, exc)

    @property
    def failed(self) -> bool:
        """True once the listener gave up (the database stayed away): waiters stop waiting."""
        return self._closed

    async def close(self) -> None:
        """Stop listening and wake every waiter (idempotent)."""
        self._closed = True
        self.waiters.wake_all()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def acquire(connection: PgConnection, channel: str) -> Listener:
    """The running loop's listener for ``connection``'s database and ``channel`` (made on
    first use); pair with :func:`release`."""
    key = (asyncio.get_running_loop(), connection.conninfo, channel)
    listener = _listeners.get(key)
    if listener is None or listener.failed:
        # its own PgConnection: it outlives the backend that made it while others use it
        own = PgConnection(
            connection.url, connection.conninfo, connection.options, what=connection.what
        )
        listener = _listeners[key] = Listener(own, channel)
    listener.users += 1
    return listener


async def release(listener: Listener) -> None:
    """Give back a listener from :func:`acquire`; the last user closes it."""
    listener.users -= 1
    if listener.users > 0:
        return
    for key, known in list(_listeners.items()):
        if known is listener:
            del _listeners[key]
    await listener.close()
