"""The private event loop that the sync API's calls run on, and the threads that run it.

``send_task``, ``delay``, ``AsyncResult.get``... are facades over coroutines; :data:`SYNC_LOOP`
runs those coroutines on one event loop per process: in the calling thread when no other call
is running it, in a background thread between calls (confirms, replies and heartbeats keep
flowing), handed over to whichever thread runs it when calls overlap. Things opened on that
loop (an App's transport and backend) are closed at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, Protocol, TypeVar

from conveyor.transports.base import Wakeup

__all__ = ["SYNC_LOOP", "Closable", "SyncLoop"]

T = TypeVar("T")


class Closable(Protocol):
    """Something opened on the private loop that must be closed there."""

    async def close(self) -> None: ...


class _HandedCall(Generic[T]):
    """One coroutine run on the private loop for a waiting thread.

    Lighter than ``run_coroutine_threadsafe``: the coroutine itself wakes the caller (a bare
    lock released in its last step) instead of a chain of future callbacks one loop turn later.
    """

    __slots__ = ("_coro", "_done", "_error", "_task", "_value")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._done = threading.Lock()
        self._done.acquire()
        self._task: asyncio.Task[None] | None = None
        self._value: Any = None
        self._error: BaseException | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            self._value = await self._coro
        except BaseException as exc:  # handed to the waiting thread, which raises it
            self._error = exc
        finally:
            self._done.release()

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        else:
            self._coro.close()

    def close(self) -> None:
        """Never started: close the coroutine (no "never awaited" warning)."""
        self._coro.close()

    def wait(self, loop: asyncio.AbstractEventLoop) -> T:
        try:
            self._done.acquire()
        except BaseException:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._cancel)
            raise
        error = self._error
        if error is not None:
            self._error = None  # no reference cycle through the traceback
            raise error
        return self._value  # type: ignore[no-any-return]


_LINGER = 0.05
"""Seconds the private loop may go unrun between sync calls before the background thread
takes it over (confirms, replies and heartbeats wait at most this long meanwhile)."""


class _LoopTurns:
    """Who runs one private event loop: a sync call in its own thread, or the background one.

    State under ``cond``: ``runner`` (ident of the thread running the loop, or holding the
    right to), ``handed`` (threads waiting on work done by whoever runs it), ``claims``
    (callers waiting for the background thread to give the loop up), ``idle_since`` (when a
    caller last stopped running it).
    """

    __slots__ = (
        "background",
        "claims",
        "cond",
        "handed",
        "idle_since",
        "loop",
        "runner",
        "stop_asked",
        "stopping",
        "wanted",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.cond = threading.Condition(threading.Lock())
        self.runner: int | None = None
        self.background = 0
        self.handed = 0
        self.claims = 0
        self.idle_since = 0.0
        self.stop_asked = False
        self.stopping = False
        self.wanted = False  # a callback was handed over (call_soon): run the loop at once

    def serve(self, ready: threading.Event) -> None:
        """The background thread: run the loop whenever no sync call has for _LINGER seconds
        (at once when a thread waits on it), until a call claims it back or ``stopping``."""
        loop, cond = self.loop, self.cond
        with cond:
            self.background = threading.get_ident()
            ready.set()
            while not self.stopping:
                if self.runner is not None or self.claims:
                    cond.wait(_LINGER)  # a call runs it; callers notify only when it matters
                    continue
                left = self.idle_since + _LINGER - time.monotonic()
                if not self.handed and not self.wanted and left > 0:
                    cond.wait(left)
                    continue
                self.runner = self.background
                self.wanted = False
                cond.release()
                try:
                    loop.run_forever()
                finally:
                    cond.acquire()
                    self.runner = None
                    self.stop_asked = False
                    cond.notify_all()

    def take(self) -> bool:
        """Make this thread the loop's runner if no other call runs it (stopping the background
        thread if it does); False if another call does (or this thread runs another loop)."""
        cond = self.cond
        me = threading.get_ident()
        with cond:
            if asyncio._get_running_loop() is not None:
                return False
            while self.runner == self.background and not self.stopping:
                self.claims += 1
                self.stop_background()
                cond.wait()
                self.claims -= 1
            if self.runner is not None:
                return False
            self.runner = me
            return True

    def stop_background(self) -> None:
        """Ask the background thread to stop running the loop, if it is (``cond`` held)."""
        if self.runner == self.background and not self.stop_asked:
            self.stop_asked = True  # one stop per run: a second would end the next run
            self.loop.call_soon_threadsafe(self.loop.stop)

    def give_back(self) -> None:
        with self.cond:
            self.runner = None
            self.idle_since = time.monotonic()
            if self.handed or self.claims or self.stopping:
                self.cond.notify_all()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """While another thread's work is awaited: the background thread runs the loop as soon
        as no call does (it does not wait out _LINGER)."""
        with self.cond:
            self.handed += 1
            if self.runner is None:
                self.cond.notify_all()
        try:
            yield
        finally:
            with self.cond:
                self.handed -= 1


class SyncLoop:
    """The private event loop of the sync API, and the threads that run it.

    A sync call runs the loop itself, in the calling thread, when no other call is running it:
    its coroutine, the broker's answers and the task's reply all stay in that thread, with no
    hand-off between threads. Between calls a background thread runs the loop (heartbeats,
    confirms, replies), taking it over once no call has run it for ``_LINGER`` seconds and
    giving it back to the next call that wants it. A call that finds another call running the
    loop hands its coroutine over and waits (:meth:`run`), or blocks until what that thread
    reads sets its :class:`Wakeup` (:meth:`wait_for`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns: _LoopTurns | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        # Opened on this loop, closed at exit even if their owner is gone by then.
        self._to_close: set[Closable] = set()

    def _current_turns(self) -> _LoopTurns:
        with self._lock:
            turns = self._turns
            if turns is None or self._pid != os.getpid() or turns.loop.is_closed():
                loop = asyncio.new_event_loop()
                turns = _LoopTurns(loop)
                ready = threading.Event()
                thread = threading.Thread(
                    target=turns.serve, args=(ready,), name="conveyor-sync-loop", daemon=True
                )
                thread.start()
                ready.wait()
                self._turns, self._thread, self._pid = turns, thread, os.getpid()
            return turns

    def current(self) -> asyncio.AbstractEventLoop | None:
        """The private loop if it exists in this process, else None (nothing started)."""
        turns = self._turns
        return turns.loop if turns is not None and self._pid == os.getpid() else None

    def in_loop_thread(self) -> bool:
        """True inside the private loop (a coroutine or callback it runs)."""
        loop = self.current()
        return loop is not None and asyncio._get_running_loop() is loop

    def _refuse_own_loop(self) -> None:
        if self.in_loop_thread():
            raise RuntimeError("conveyor's sync API cannot be called from its own event loop")

    def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``make()`` on the private loop and return its result: in this thread when no
        other call runs the loop, else by handing the coroutine to the thread that does."""
        self._refuse_own_loop()
        turns = self._current_turns()
        loop = turns.loop
        if turns.take():
            try:
                task = loop.create_task(make())  # copies this thread's context
                try:
                    return loop.run_until_complete(task)
                except BaseException:
                    if not task.done():
                        task.cancel()  # finished by whoever runs the loop next
                    raise
            finally:
                turns.give_back()
        with turns.waiting():
            call = _HandedCall(make())
            try:
                # The callback runs in a copy of this thread's context (contextvars travel along).
                loop.call_soon_threadsafe(call.start, loop)
            except BaseException:
                call.close()
                raise
            return call.wait(loop)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the private loop soon, without waiting for it (any thread but
        the loop's): by whichever call runs the loop, else at once by the background thread."""
        turns = self._current_turns()
        turns.loop.call_soon_threadsafe(callback)
        with turns.cond:
            if turns.runner is None:
                turns.wanted = True
                turns.cond.notify_all()

    def wait_for(self, wakeup: Wakeup, timeout: float | None) -> bool:
        """Block until ``wakeup`` is set by something the private loop reads (True), or for
        ``timeout`` seconds (False): running the loop in this thread meanwhile when no other
        call runs it, else waiting for the thread that does."""
        if wakeup.is_set():
            return True
        self._refuse_own_loop()
        turns = self._current_turns()
        if not turns.take():
            with turns.waiting():
                return wakeup.wait(timeout)
        loop = turns.loop
        try:
            done = loop.create_future()
            me = threading.get_ident()

            def resolve() -> None:
                if not done.done():
                    done.set_result(None)

            def on_set() -> None:
                if threading.get_ident() == me:
                    resolve()  # read by the loop this thread runs
                else:
                    loop.call_soon_threadsafe(resolve)

            wakeup.on_set = on_set
            if wakeup.is_set():
                return True
            timer = loop.call_later(timeout, resolve) if timeout is not None else None
            try:
                loop.run_until_complete(done)
            finally:
                wakeup.on_set = None
                if timer is not None:
                    timer.cancel()
            return wakeup.is_set()
        finally:
            turns.give_back()

    def close_at_exit(self, resource: Closable) -> None:
        """Close ``resource`` on this loop at interpreter exit, unless :meth:`forget` first."""
        self._to_close.add(resource)

    def forget(self, resource: Closable) -> None:
        """Do not close ``resource`` at exit (it closed itself); idempotent."""
        self._to_close.discard(resource)

    def close_all_and_stop(self) -> None:
        """At exit: close what :meth:`close_at_exit` was given (10 s at most), stop the loop."""
        if self.current() is not None:
            with contextlib.suppress(Exception):
                self.run(lambda: asyncio.wait_for(_close_each(list(self._to_close)), 10))
        self.stop()

    def stop(self) -> None:
        """Stop the background thread and close the loop (the next call starts afresh)."""
        with self._lock:
            turns, thread = self._turns, self._thread
            self._turns = self._thread = None
        if turns is None or thread is None or self._pid != os.getpid():
            return
        loop = turns.loop
        with turns.cond:
            turns.stopping = True
            turns.stop_background()
            turns.cond.notify_all()
        thread.join(timeout=5)
        if not thread.is_alive() and turns.runner is None:
            loop.close()


async def _close_each(resources: list[Closable]) -> None:
    for resource in resources:
        with contextlib.suppress(Exception):
            await resource.close()


SYNC_LOOP = SyncLoop()
"""The process's one private loop for sync calls."""

# Run before the interpreter shuts thread pools down, so that closing can still use them: the
# thread pool module registers its own hook on import, and hooks run last-registered first.
importlib.import_module("concurrent.futures.thread")
_register_early = getattr(threading, "_register_atexit", None)
if _register_early is not None:
    _register_early(SYNC_LOOP.close_all_and_stop)
else:
    atexit.register(SYNC_LOOP.close_all_and_stop)
