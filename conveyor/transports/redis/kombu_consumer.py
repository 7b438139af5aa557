"""The kombu layout's consumer: it takes a batch of ready messages in one script, up to the
prefetch room, and blocks in BRPOP (kombu's own wait) only when its queues are empty."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from conveyor.transports.base import Consumer, Delivery

if TYPE_CHECKING:
    from conveyor.transports.redis.kombu_transport import KombuRedisTransport

__all__ = ["KombuConsumer"]

# How many messages one take may fetch when the consumer has no prefetch bound.
_UNBOUNDED_BATCH = 100


class KombuConsumer(Consumer):
    """Takes its queues' messages in priority-step order, keeping at most ``prefetch``
    deliveries unsettled (taken ones included)."""

    def __init__(
        self,
        transport: KombuRedisTransport,
        queues: list[str],
        prefetch: int,
        no_ack: bool,
        tag: str | None,
    ) -> None:
        self.transport = transport
        self.queues = tuple(queues)
        self._order = list(queues)
        self.prefetch = prefetch
        self.no_ack = no_ack
        self.tag = tag or f"ctag-{uuid.uuid4().hex[:12]}"
        self._outstanding: set[str] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._cancelled = asyncio.Event()
        self._ready: deque[Delivery] = deque()  # taken, not yet yielded

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
            popped = await transport._pop(self._order, transport.poll_interval)
            if popped is None:
                return
            queue, key, raw = popped
            if self._cancelled.is_set():
                await transport._push_back(key.decode(), raw)
                return
            taken = [await transport._record(raw, queue, self.no_ack)]
        for delivery in taken:
            if not self.no_ack:
                self._outstanding.add(str(delivery.tag))
            self._ready.append(delivery)
        self._rotate(taken[-1].queue)

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
