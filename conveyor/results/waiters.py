"""Callers waiting on results, by task id: the bookkeeping every waking backend shares."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Self

from conveyor.transports.base import Wakeup

__all__ = ["FutureWatch", "Waiters"]


class FutureWatch:
    """A ``Watch`` (see ``results/base.py``) over one-shot futures, as an async context.

    ``arm()`` returns a future the backend resolves at the task's next change; ``disarm(fut)``
    forgets one (idempotent). Armed on entering and again at each wake-up, before the caller
    reads again, so a change between that read and the next sleep is never missed.
    """

    __slots__ = ("_arm", "_disarm", "_fut")

    def __init__(
        self,
        arm: Callable[[], asyncio.Future[None]],
        disarm: Callable[[asyncio.Future[None]], None],
    ) -> None:
        self._arm = arm
        self._disarm = disarm

    async def __aenter__(self) -> Self:
        self._fut = self._arm()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._disarm(self._fut)

    async def changed(self, timeout: float | None) -> bool:
        """True once woken (re-armed by then); False after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._fut, timeout)
        except TimeoutError:
            return False
        self._disarm(self._fut)
        self._fut = self._arm()
        return True


class Waiters:
    """Futures (and thread wakeups) that resolve when something may have changed for a task id.

    A waiter watches, re-reads the result after each wake-up, and unwatches when done; waking
    is a hint, so a spurious wake-up costs one read and a missed one is the backend's bug.
    Futures belong to the backend's event loop: :meth:`watch`, :meth:`wake` and
    :meth:`wake_all` run there. Thread waiters (:meth:`watch_thread`) may be added and removed
    from any thread; they let a sync caller block in its own thread without a trip through the
    event loop. A thread waiter must read the result *after* watching, so a result filed just
    before is never missed.
    """

    __slots__ = ("_by_id", "_lock", "_threads")

    def __init__(self) -> None:
        self._by_id: dict[str, set[asyncio.Future[None]]] = {}
        self._threads: dict[str, list[Wakeup]] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._by_id) or bool(self._threads)

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

    def watching(self, task_id: str) -> FutureWatch:
        """A watch on ``task_id`` (``ResultBackend._watch_results``) over :meth:`watch`."""
        return FutureWatch(lambda: self.watch(task_id), lambda fut: self.unwatch(task_id, fut))

    def watch_thread(self, task_id: str, wakeup: Wakeup | None = None) -> Wakeup:
        """``wakeup`` (a new one if None), set by the next :meth:`wake` of ``task_id`` (or
        :meth:`wake_all`): the calling thread blocks on its ``wait``. Any thread."""
        if wakeup is None:
            wakeup = Wakeup()
        with self._lock:
            self._threads.setdefault(task_id, []).append(wakeup)
        return wakeup

    def unwatch_thread(self, task_id: str, wakeup: Wakeup) -> None:
        """Forget ``wakeup``; idempotent. Any thread."""
        with self._lock:
            wakeups = self._threads.get(task_id)
            if wakeups is not None and wakeup in wakeups:
                wakeups.remove(wakeup)
                if not wakeups:
                    del self._threads[task_id]

    def wake(self, task_id: str) -> None:
        """Resolve every future and release every thread watching ``task_id``."""
        for fut in self._by_id.get(task_id, ()):
            if not fut.done():
                fut.set_result(None)
        if self._threads:
            with self._lock:
                wakeups = self._threads.pop(task_id, ())
            for wakeup in wakeups:
                wakeup.set()

    def wake_all(self) -> None:
        """Wake every waiter (the backend is closing or lost its source of news)."""
        for task_id in list(self._by_id):
            self.wake(task_id)
        with self._lock:
            ids = list(self._threads)
        for task_id in ids:
            self.wake(task_id)
