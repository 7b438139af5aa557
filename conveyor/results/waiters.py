"""Callers waiting on results, by task id: the bookkeeping every waking backend shares."""

from __future__ import annotations

import asyncio

__all__ = ["Waiters"]


class Waiters:
    """Futures that resolve (to None) when something may have changed for a task id.

    A waiter watches, re-reads the result after each wake-up, and unwatches when done; waking
    is a hint, so a spurious wake-up costs one read and a missed one is the backend's bug.
    Used from one event loop only.
    """

    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        self._by_id: dict[str, set[asyncio.Future[None]]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def watch(self, task_id: str) -> asyncio.Future[None]:
        """A new future, resolved by the next :meth:`wake` of ``task_id`` (or :meth:`wake_all`)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_id.setdefault(task_id, set()).add(fut)
        return fut

    def unwatch(self, task_id: str, fut: asyncio.Future[None]) -> None:
        """Forget ``fut``; idempotent."""
        waiters = self._by_id.get(task_id)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del self._by_id[task_id]

    def wake(self, task_id: str) -> None:
        """Resolve every future watching ``task_id``."""
        for fut in self._by_id.get(task_id, ()):
            if not fut.done():
                fut.set_result(None)

    def wake_all(self) -> None:
        """Resolve every future (the backend is closing or lost its source of news)."""
        for task_id in list(self._by_id):
            self.wake(task_id)
