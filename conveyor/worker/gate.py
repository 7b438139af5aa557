"""The gate that bounds the tasks running at once in a pool, threads and coroutines together."""

from __future__ import annotations

import asyncio
import collections

from conveyor.worker.outcome import NotStarted

__all__ = ["Gate"]


class Gate:
    """Bounds the tasks running at once to ``size``, threads and coroutines together, with no
    lock on a thread's path: it is kept on the event loop alone.

    ``threaded`` counts calls handed to the pool's threads (waiting there or running),
    ``coroutines`` the ``async def`` tasks running on the loop. A call may be handed over while
    no coroutine runs and fewer than ``size + lookahead`` are; while coroutines run, only if
    handed-over calls and coroutines together stay under ``size`` (a call handed over may start
    at once on an idle thread). A coroutine may start while the two together stay under
    ``size``. Whoever cannot go waits, in arrival order.
    """

    def __init__(self, size: int, lookahead: int) -> None:
        self.size = size
        self.lookahead = lookahead
        self.threaded = 0
        self.coroutines = 0
        # (threaded, kept by withdraw, waiter)
        self._waiters: collections.deque[tuple[bool, bool, asyncio.Future[None]]] = (
            collections.deque()
        )

    def _allows(self, threaded: bool) -> bool:
        if threaded and not self.coroutines:
            return self.threaded < self.size + self.lookahead
        return self.threaded + self.coroutines < self.size

    def _count(self, threaded: bool, step: int) -> None:
        if threaded:
            self.threaded += step
        else:
            self.coroutines += step

    def resize(self, size: int) -> None:
        """Let ``size`` run at once from now on (running ones above it finish as usual)."""
        self.size = size
        if self._waiters:
            self._wake()

    def try_enter(self, threaded: bool) -> bool:
        """Go now if the rules allow and nobody waits; False otherwise (then :meth:`enter`)."""
        if not self._waiters and self._allows(threaded):
            self._count(threaded, 1)
            return True
        return False

    async def enter(self, threaded: bool, keep: bool = False) -> None:
        """Wait until a call (``threaded``) or a coroutine may go. NotStarted if withdrawn
        (never when ``keep``)."""
        if self.try_enter(threaded):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((threaded, keep, waiter))
        try:
            await waiter  # counted in by _wake before it is woken
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.leave(threaded)  # let in, then cancelled before it could go
            raise

    def leave(self, threaded: bool) -> None:
        self._count(threaded, -1)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            threaded, _, waiter = waiters[0]
            if waiter.done():  # cancelled while it waited
                waiters.popleft()
                continue
            if not self._allows(threaded):
                return
            waiters.popleft()
            self._count(threaded, 1)
            waiter.set_result(None)

    def withdraw(self) -> int:
        """Every waiter not kept gets NotStarted; returns how many."""
        waiters = self._waiters
        self._waiters = collections.deque(entry for entry in waiters if entry[1])
        withdrawn = 0
        for _, keep, waiter in waiters:
            if not keep and not waiter.done():
                waiter.set_exception(NotStarted())
                withdrawn += 1
        return withdrawn
