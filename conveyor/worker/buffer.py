"""The worker's local priority buffer for prefetched deliveries.

Deliveries wait here between the consumer and an execution slot. The highest priority comes out
first and, within a priority, the earliest: so a high-priority message that arrives after
lower-priority ones were prefetched still runs before them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from conveyor.transports.base import Delivery

__all__ = ["PriorityBuffer"]


class PriorityBuffer:
    """A heap of deliveries by (priority desc, arrival asc), with an awaitable ``pop``."""

    def __init__(self, *, lowest_first: bool = False) -> None:
        """``lowest_first``: priority 0 comes out first (the transport orders that way)."""
        self._sign = 1 if lowest_first else -1
        self._heap: list[tuple[int, int, Delivery]] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, delivery: Delivery) -> None:
        """Add ``delivery``; a message without a priority counts as 0."""
        priority = delivery.envelope.priority or 0
        heapq.heappush(self._heap, (self._sign * priority, next(self._order), delivery))
        self._changed.set()

    async def pop(self) -> Delivery:
        """Take the best delivery, waiting until there is one."""
        while not self._heap:
            self._changed.clear()
            await self._changed.wait()
        return heapq.heappop(self._heap)[2]

    def pop_nowait(self) -> Delivery:
        """Take the best delivery; IndexError if there is none."""
        return heapq.heappop(self._heap)[2]

    def drain(self) -> list[Delivery]:
        """Remove and return everything, best first."""
        items = [heapq.heappop(self._heap)[2] for _ in range(len(self._heap))]
        return items
