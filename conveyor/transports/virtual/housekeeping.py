"""A connection's housekeeping on the virtual broker: renewing its lease, reaping dead
connections, dead-lettering expired messages, deleting expired, exclusive and auto-delete
queues (and the auto-delete exchanges they leave unbound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence

from conveyor.transports.background import stop_task
from conveyor.transports.storage import Reaped
from conveyor.transports.virtual.connection import VirtualConnection
from conveyor.transports.virtual.publishing import Publisher

__all__ = ["Housekeeper"]

log = logging.getLogger("conveyor.transports")

_CLAIM_BATCH = 256


class Housekeeper:
    """Runs ``connection``'s housekeeping in a background task between :meth:`start` and
    :meth:`stop`, and removes queues for its transport.

    The task renews the lease every quarter ``lease`` (calling ``revive`` if storage had
    declared the connection dead), reaps connections whose lease lapsed, and otherwise sleeps
    until the next message or queue expiry or a :meth:`wake`. A failed round is logged and
    retried a quarter lease later.
    """

    def __init__(
        self,
        connection: VirtualConnection,
        publisher: Publisher,
        *,
        lease: float,
        revive: Callable[[], Awaitable[None]],
    ) -> None:
        self._storage = connection.storage
        self._topology = connection.topology
        self._connection = connection.id
        self._publisher = publisher
        self._lease = lease
        self._revive = revive
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background task (on the running loop)."""
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(
            self._run(), name=f"conveyor-housekeeper-{self._connection[:8]}"
        )

    async def stop(self) -> None:
        """Cancel the background task and wait for it to end (idempotent)."""
        task, self._task = self._task, None
        await stop_task(task)

    def wake(self) -> None:
        """Look again now: a message with a TTL or a queue with ``x-expires`` appeared."""
        self._wake.set()

    async def remove_queue(self, name: str) -> int:
        """Remove queue ``name``, then the auto-delete exchanges it was the last binding of;
        return how many messages it held."""
        snap = await self._topology.fresh()
        sources = {b.exchange for b in snap.topology.bindings if b.queue == name}
        removed = await self._storage.remove_queue(name)
        self._topology.invalidate()
        await self.drop_unbound_exchanges(sources)
        return removed

    async def drop_unbound_exchanges(self, names: set[str]) -> None:
        """Delete the auto-delete exchanges among ``names`` that have no bindings left."""
        if not names:
            return
        snap = await self._topology.fresh()
        for name in sorted(names):
            exchange = snap.topology.exchanges.get(name)
            unbound = exchange is not None and not snap.topology.bindings_of(name)
            if unbound and exchange is not None and exchange.auto_delete:
                await self._storage.remove_exchange(name)
                self._topology.invalidate()

    async def delete_auto_delete(self, idle: Sequence[str]) -> None:
        """Delete the auto-delete queues among ``idle`` (queues that just lost their last
        consumer)."""
        if not idle:
            return
        snap = await self._topology.fresh()
        for name in idle:
            queue = snap.topology.queues.get(name)
            if queue is not None and queue.auto_delete:
                await self.remove_queue(name)

    async def remove_exclusive_queues(self, owners: Collection[str]) -> None:
        """Delete the exclusive queues of the connections ``owners`` (closed or dead)."""
        snap = await self._topology.fresh()
        for name, owner in snap.owners.items():
            if owner in owners:
                await self.remove_queue(name)

    async def _after_reap(self, reaped: Reaped) -> None:
        if not reaped.connections:
            return
        log.info("connections %s stopped renewing; their deliveries are back", reaped.connections)
        await self.remove_exclusive_queues(set(reaped.connections))
        await self.delete_auto_delete(reaped.idle_queues)

    async def _expire_messages(self) -> None:
        while True:
            claimed = await self._storage.claim_expired(
                connection=self._connection, limit=_CLAIM_BATCH
            )
            if not claimed:
                return
            await self._publisher.dead_letter([(m, "expired") for m in claimed])

    async def _expire_queues(self, now: float) -> float | None:
        """Delete the queues unused past their ``x-expires``; return the next deadline."""
        snap = await self._topology.fresh()
        limits = {
            name: q.arguments["x-expires"] / 1000
            for name, q in snap.topology.queues.items()
            if "x-expires" in q.arguments
        }
        if not limits:
            return None
        soonest: float | None = None
        for name, act in (await self._storage.activity(list(limits))).items():
            if act.consumers:
                continue
            deadline = act.used_at + limits[name]
            if deadline <= now:
                log.info("queue %r unused for %ss (x-expires): deleting it", name, limits[name])
                await self.remove_queue(name)
            elif soonest is None or deadline < soonest:
                soonest = deadline
        return soonest

    async def _renew(self) -> None:
        if not await self._storage.renew(self._connection, lease=self._lease):
            log.warning(
                "connection %s was declared dead; registering its consumers again",
                self._connection,
            )
            await self._revive()

    async def _expire(self, wake: float) -> float:
        """Dead-letter expired messages, delete expired queues; return when to look again
        (at the latest ``wake``)."""
        message_expiry = await self._storage.next_expiry()
        if message_expiry is not None and message_expiry <= time.time():
            await self._expire_messages()
            message_expiry = await self._storage.next_expiry()
        if message_expiry is not None:
            wake = min(wake, message_expiry)
        queue_expiry = await self._expire_queues(time.time())
        if queue_expiry is not None:
            wake = min(wake, queue_expiry)
        return wake

    async def _run(self) -> None:
        interval = self._lease / 4
        next_renew = 0.0
        while True:
            # cleared before looking, so a wake-up that arrives while we look is kept
            self._wake.clear()
            try:
                now = time.time()
                if now >= next_renew:
                    await self._renew()
                    next_renew = now + interval
                    await self._after_reap(await self._storage.reap())
                wake = await self._expire(next_renew)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("broker housekeeping failed; retrying in %.1fs", interval)
                wake = time.time() + interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.001, wake - time.time())):
                    await self._wake.wait()
