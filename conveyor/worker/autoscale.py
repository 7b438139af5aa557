"""``--autoscale MAX,MIN``: the pool grows up to MAX while tasks wait and shrinks back to MIN
after it has been idle a while.

The worker prefetches for MAX (its ``concurrency`` is MAX); the pool runs as many tasks at once
as its current size. Every ``interval`` seconds the :class:`Autoscaler` compares the demand
(tasks running or waiting in the worker) with the pool's size: more demand grows the pool at
once (up to MAX); a pool that has had more room than demand for ``keepalive`` seconds shrinks to
the demand (not below MIN). A shrinking pool lets running tasks finish: threads and child
processes leave when their current task ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from conveyor.errors import ConfigurationError
from conveyor.worker.pools import Pool

__all__ = ["Autoscaler", "parse_autoscale"]

log = logging.getLogger("conveyor.worker")


def parse_autoscale(value: str | tuple[int, int]) -> tuple[int, int]:
    """``"MAX,MIN"`` (or ``"MAX"``: MIN 0) as ``(max, min)``; ConfigurationError unless
    ``MAX >= 1`` and ``0 <= MIN <= MAX``."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        try:
            numbers = [int(part) for part in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 2):
            raise ConfigurationError(
                f"autoscale {value!r} is not MAX,MIN: give two whole numbers, like 10,3"
            )
        high, low = numbers[0], numbers[1] if len(numbers) == 2 else 0
    else:
        high, low = value
    if high < 1 or not 0 <= low <= high:
        raise ConfigurationError(
            f"autoscale MAX,MIN must have MAX of 1 or more and MIN between 0 and MAX, "
            f"got {high},{low}"
        )
    return high, low


@dataclass(eq=False)
class Autoscaler:
    """Resizes ``pool`` between ``minimum`` and ``maximum`` by ``demand()`` (see the module's
    text), checking every ``interval`` seconds and shrinking after ``keepalive`` idle seconds.
    ``clock`` is injectable for tests."""

    pool: Pool
    maximum: int
    minimum: int
    demand: Callable[[], int]
    _: KW_ONLY
    keepalive: float = 30.0
    interval: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _busy_at: float = field(init=False)

    def __post_init__(self) -> None:
        self._busy_at = self.clock()

    async def step(self) -> int:
        """Compare demand and size once; resize if due. Returns the pool's size after."""
        demand = self.demand()
        size = self.pool.concurrency
        now = self.clock()
        if demand >= size:
            self._busy_at = now
            if size < self.maximum:
                target = min(self.maximum, demand)
                if target > size:
                    log.info(
                        "autoscale: %d tasks want to run, growing the pool %d -> %d",
                        demand,
                        size,
                        target,
                    )
                    await self.pool.resize(target)
        elif size > self.minimum and now - self._busy_at >= self.keepalive:
            target = max(self.minimum, demand)
            log.info(
                "autoscale: idle for %g s, shrinking the pool %d -> %d",
                now - self._busy_at,
                size,
                target,
            )
            await self.pool.resize(target)
            self._busy_at = now
        return self.pool.concurrency

    async def run(self) -> None:
        """Step every ``interval`` seconds until cancelled; a failed step is logged."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.step()
            except Exception:
                log.exception("autoscale: resizing the pool failed")
