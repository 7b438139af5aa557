"""The kombu layout's consumer: it takes a batch of ready messages in one script, up to the
prefetch room, and blocks in BRPOP (kombu's own wait) only when its queues are empty."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from conveyor.transports.base import Consumer, Delivery, Subscription

if TYPE_CHECKING:
    from conveyor.transports.redis.kombu_transport import KombuRedisTransport

__all__ = ["KombuConsumer"]

# How many messages one take may fetch when the consumer has no prefetch bound.
_UNBOUNDED_BATCH = 100


class KombuConsumer(Consumer):
    """Takes its queues' messages in priority-step order, keeping at most ``prefetch``
    deliveries unsettled (taken ones included)."""

    def __init__(
        self, transport: KombuRedisTransport, subscription: Subscription, tag: str
    ) -> None:
        super().__init__(subscription, tag)
        self.transport = transport
        self._order = list(subscription.queues)
        self._outstanding: set[str] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._cancelled = asyncio.Event()
        self._ready: deque[Delivery] = deque()  # taken, not yet yielded
        self._pops: set[asyncio.Task[Delivery | None]] = set()
        self._returns: set[asyncio.Task[bool]] = set()
        self._orphaned = False  # the reader was cancelled in the middle of a BRPOP

    def settled(self, tag: str) -> None:
        if tag in self._outstanding:
            self._outstanding.discard(tag)
            self._room.set()

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._deliveries()

    def _rotate(self, queue: str) -> None:
        # kombu's round_robin: the queue just served goes to the back of the order.
        if self.transport.strategy == "round_robin" and queue in self._order:
            self._order.remove(queue)
            self._order.append(queue)

    async def _fill(self) -> None:
        """Take what is ready, up to the prefetch room; if nothing is, wait in one BRPOP."""
        transport = self.transport
        room = (
            self.prefetch - len(self._outstanding) - len(self._ready)
            if self.prefetch
            else _UNBOUNDED_BATCH
        )
        if room <= 0:
            return
        taken = await transport._take(self._order, room, self.no_ack)
        if not taken:
            # A BRPOP cut off half way may still take a message: it runs to its end in a task
            # of its own, and what it took goes back if nobody is left to receive it.
            pop = asyncio.get_running_loop().create_task(self._pop_or_return())
            self._pops.add(pop)
            pop.add_done_callback(self._pops.discard)
            try:
                popped = await asyncio.shield(pop)
            except asyncio.CancelledError:
                self._orphaned = True
                pop.add_done_callback(self._give_back)
                raise
            if popped is None:
                return
            taken = [popped]
        for delivery in taken:
            if not self.no_ack:
                self._outstanding.add(str(delivery.tag))
            self._ready.append(delivery)
        self._rotate(taken[-1].queue)

    async def _pop_or_return(self) -> Delivery | None:
        """One BRPOP and the record of what it took; a message it took after the consumer was
        cancelled (or its reader was) goes back to the head of its list instead."""
        transport = self.transport
        popped = await transport._pop(self._order, transport.poll_interval)
        if popped is None:
            return None
        queue, key, raw = popped
        if self._cancelled.is_set() or self._orphaned:
            await transport._push_back(key.decode(), raw)
            return None
        return await transport._record(raw, queue, self.no_ack)

    def _give_back(self, pop: asyncio.Task[Delivery | None]) -> None:
        """A delivery recorded for a reader that was cancelled meanwhile goes back."""
        if pop.cancelled() or pop.exception() is not None or pop.result() is None:
            return
        delivery = pop.result()
        assert delivery is not None
        transport = self.transport
        if transport._settled(delivery.tag) is None:
            return
        back = asyncio.get_running_loop().create_task(
            transport._restore(str(delivery.tag), delivery.queue)
        )
        self._returns.add(back)
        back.add_done_callback(self._returns.discard)

    async def _deliveries(self) -> AsyncIterator[Delivery]:
        transport = self.transport
        while not self._cancelled.is_set() and not transport._closed:
            if not self._ready:
                if self.prefetch and len(self._outstanding) >= self.prefetch:
                    self._room.clear()
                    await self._room.wait()
                    continue
                await self._fill()
                continue
            d = self._ready.popleft()
            yield Delivery(
                d.envelope,
                d.queue,
                d.exchange,
                d.routing_key,
                d.redelivered,
                d.delivery_count,
                d.tag,
                self.tag,
            )

    async def cancel(self) -> None:
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        self._room.set()
        if self._pops:  # let a BRPOP in flight end (within poll_interval) and give back
            await asyncio.wait(list(self._pops))
        if self._returns:
            await asyncio.wait(list(self._returns))
        transport = self.transport
        if self in transport._consumers:
            transport._consumers.remove(self)
        with contextlib.suppress(Exception):
            await transport._unregister(self)
        # Taken but never handed out: back to the head of their queues at once.
        while self._ready:
            delivery = self._ready.popleft()
            self._outstanding.discard(str(delivery.tag))
            if transport._settled(delivery.tag) is not None:
                with contextlib.suppress(Exception):
                    await transport._restore(str(delivery.tag), delivery.queue)
