"""The one interface every result backend implements.

A backend keeps task results (as :class:`ResultMeta`) where callers can read them. Workers
``store`` them; callers ``get``, ``wait`` for, ``collect`` and ``forget`` them. The contract,
which ``tests/results/`` checks on every backend:

- Results are keyed by task id and, for broadcast tasks (``per_worker=True``), by the worker's
  hostname too, so no worker's result overwrites another's. A plain store for a task id
  replaces the previous state of that id (STARTED, then RETRY, then SUCCESS...).
- ``wait`` returns the first *ready* state (SUCCESS, FAILURE, REVOKED) and never spins: it
  sleeps until the backend is told something changed. It raises ResultTimeout when ``timeout``
  passes first. Waiting for several ids at once, in any order, never loses a result.
  ``wait`` and ``collect`` are written once, here, over two primitives each backend gives:
  ``_read_all`` (every result kept for a task id) and ``_watch_results`` (be woken when they
  may have changed).
- ``store`` returns once the result is safely kept (committed, published). Storing a value that
  JSON cannot hold raises ProtocolError.
- Methods may be cancelled; a cancelled ``store`` may or may not have been kept.
- Errors are conveyor errors; client-library exceptions never escape.

A backend instance belongs to the event loop that first used it. ``App`` keeps one per loop
and closes them with itself.

Implementations: ``memory://`` (one process), ``sqlite:///path`` (the broker's file by
default), ``rpc://`` (replies as messages to the caller's reply queue) and ``redis://``.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self

from conveyor.errors import ConfigurationError, ResultTimeout
from conveyor.lifecycle import Connectable
from conveyor.results.meta import ResultMeta, pick_result
from conveyor.seconds import seconds
from conveyor.transports.base import Wakeup

if TYPE_CHECKING:
    from conveyor.config import Settings
    from conveyor.transports.base import Transport

__all__ = [
    "CHORD_CLAIM_SECONDS",
    "BackendHost",
    "BatchingBackend",
    "Block",
    "ChordJoin",
    "ChordPart",
    "ResultBackend",
    "StoreRequest",
    "Watch",
    "seconds_left",
]

CHORD_CLAIM_SECONDS = 10.0
"""How long a worker's claim on sending a chord's body lasts before another may take it."""

Block = Callable[[Wakeup, float | None], bool]
"""How a thread waits for a :class:`Wakeup`: True once set, False after the seconds given."""


class BackendHost(Protocol):
    """What a backend may use of the App that opened it: its settings and its broker."""

    @property
    def conf(self) -> Settings:
        """The application's settings."""
        ...

    async def atransport(self) -> Transport:
        """The App's connected transport for the running event loop."""
        ...


class Watch(Protocol):
    """One waiter's watch on one task id's results (see :meth:`ResultBackend._watch_results`)."""

    async def changed(self, timeout: float | None) -> bool:
        """Sleep until the task's results may have changed, then True: read them again (a
        wake-up is a hint, never a promise). False when ``timeout`` seconds (None: no limit)
        pass first, or when the watch can tell that no news will come (its source closed)."""
        ...


def seconds_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a ``time.monotonic()`` reading; None: no limit)."""
    return None if deadline is None else deadline - time.monotonic()


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """One result to store: ``meta`` plus where the caller asked for it to go.

    ``reply_to`` and ``correlation_id`` come from the task message (rpc:// replies there);
    ``per_worker`` keys the result by task id *and* ``meta.worker`` (broadcast tasks).
    """

    meta: ResultMeta
    reply_to: str | None = None
    correlation_id: str | None = None
    per_worker: bool = False


@dataclass(frozen=True, slots=True)
class ChordPart:
    """One finished header task of chord ``group_id``: its ``state`` (SUCCESS, FAILURE...)
    and ``result`` (the value, or the error as :func:`~conveyor.results.meta.exception_to_result`
    describes it), at place ``group_index`` in the header (None: unknown, sorts last)."""

    group_id: str
    task_id: str
    group_index: int | None
    state: str
    result: Any = None


@dataclass(frozen=True, slots=True)
class ChordJoin:
    """A chord whose header parts are all in: ``parts`` in header order, and the ``claim``
    token that makes the holder the one worker to send the body (see ``chord_part_done``)."""

    group_id: str
    claim: str
    parts: tuple[ChordPart, ...]


class ResultBackend(Connectable):
    """Where task results are kept. Create with :func:`conveyor.results.open_backend`."""

    url: str
    # True once closed: a wait then ends with ResultTimeout instead of sleeping.
    _closed = False
    # What a ResultTimeout calls the awaited thing, and what it adds (rpc:// says both its way).
    _awaited = "result"
    _timeout_hint = ""
    # Whether chords can join here (chord_start, chord_part_done, chord_done work).
    joins_chords = False

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str, *, host: BackendHost) -> Self:
        """Build an unconnected backend; ConfigurationError for a malformed URL."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open connections the backend needs (idempotent). BrokerUnavailable if it can't."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and wake waiters with ResultTimeout (idempotent)."""

    async def prepare_reply(self) -> str | None:
        """Called by a sender before it publishes: the ``reply_to`` to put on the message.

        Backends that keep results where anyone can read them return None (the default);
        ``rpc://`` declares the caller's reply queue on first use and returns its name.
        """
        return None

    def peek(self, task_id: str) -> ResultMeta | None:
        """A *ready* result for ``task_id`` that this backend already holds in this process,
        or None. Never does I/O and may be called from any thread: the sync API uses it to
        skip a trip to the event loop when the result is already here. None says nothing about
        the task (use ``get``/``wait``); backends that hold nothing locally return None (the
        default).
        """
        return None

    def watch_replies(self, task_id: str) -> asyncio.Future[None] | None:
        """A future that resolves when anything about ``task_id`` (any state) reaches this
        process unasked, which proves a worker received the task; None if this backend cannot
        tell (the default). Only ``rpc://`` can: replies come to this process's reply queue.
        Pair with :meth:`unwatch_replies`. On the backend's event loop.
        """
        return None

    def unwatch_replies(self, task_id: str, watch: asyncio.Future[None]) -> None:
        """Forget a future from :meth:`watch_replies`; idempotent (nothing to forget here)."""

    def watch_replies_from_thread(self, task_id: str, wakeup: Wakeup) -> bool:
        """:meth:`watch_replies` for a thread: set ``wakeup`` when anything about ``task_id``
        reaches this process unasked; False if this backend cannot tell (the default). Any
        thread; pair with :meth:`unwatch_replies_from_thread`."""
        return False

    def unwatch_replies_from_thread(self, task_id: str, wakeup: Wakeup) -> None:
        """Forget ``wakeup`` from :meth:`watch_replies_from_thread`; idempotent. Any thread."""

    def wait_from_thread(
        self, task_id: str, timeout: float | None, block: Block = Wakeup.wait
    ) -> ResultMeta | None:
        """Block the calling thread (never the backend's event loop) until a ready result for
        ``task_id`` reaches this process, and return it; ResultTimeout after ``timeout``
        seconds (or when the backend closes). ``block(wakeup, seconds)`` is how the thread
        waits for a :class:`Wakeup` the backend's reader sets (the sync API's runs the
        private event loop meanwhile when no other thread does).

        Only backends whose results arrive unasked can wait this way, and the sync API uses it
        to skip two trips through the event loop: ``rpc://`` (replies come to this process's
        reply queue) for the whole ``timeout``; ``redis://`` for a few milliseconds on its
        reply channel, then None. The others return :meth:`peek` at once (the default). None
        means "wait through the event loop with :meth:`wait`".
        """
        return self.peek(task_id)

    @abc.abstractmethod
    async def store(self, request: StoreRequest) -> None:
        """Keep ``request.meta`` (see the module contract on keys and replacement)."""

    @property
    def stores_from_thread(self) -> bool:
        """Whether :meth:`store_from_thread` can succeed now; a worker asks before handing its
        pool threads the work of building a result for it. False here (the default)."""
        return False

    def store_from_thread(self, request: StoreRequest) -> bool:
        """Keep ``request.meta`` from a thread other than the backend's event loop, if this
        backend can there and then without the loop; True once kept as :meth:`store` would
        keep it, False (the default) to store it on the loop instead.

        A worker's pool thread uses it to send a plain function's result itself. Only
        ``rpc://`` on RabbitMQ can (the reply goes straight onto the worker's connection, see
        ``Transport.publish_from_thread``), and only after its first reply went the usual way.
        """
        return False

    async def store_many(self, requests: Sequence[StoreRequest]) -> None:
        """Keep several results; backends override this to batch."""
        for request in requests:
            await self.store(request)

    @abc.abstractmethod
    async def get(self, task_id: str) -> ResultMeta | None:
        """The latest state known for ``task_id``, or None if nothing is known (PENDING).

        For a broadcast task with no plain result, one of the workers' results.
        """

    @abc.abstractmethod
    async def _read_all(self, task_id: str) -> Mapping[str, ResultMeta]:
        """Every result kept for ``task_id``, any state, by worker hostname (``""`` for the
        plain one); empty if nothing is known. What :meth:`wait` and :meth:`collect` read."""

    @abc.abstractmethod
    def _watch_results(self, task_id: str) -> AbstractAsyncContextManager[Watch]:
        """A watch on ``task_id`` for as long as the context lasts: its ``changed`` wakes when
        the task's results may have changed. In effect from entering, so a result kept after
        that is never missed by a read that follows. Never polls where the backend can be
        told."""

    def _timeout_error(self, task_id: str, timeout: float | None) -> ResultTimeout:
        """The ResultTimeout every wait for ``task_id`` raises (in time, or closed)."""
        if self._closed or timeout is None:
            why = ": the result backend closed"
        else:
            why = f" within {seconds(timeout)}; is a worker consuming its queue?"
        return ResultTimeout(f"no {self._awaited} for task {task_id}{why}{self._timeout_hint}")

    async def wait(self, task_id: str, *, timeout: float | None = None) -> ResultMeta:
        """Wait until ``task_id`` is ready and return that state; ResultTimeout on timeout
        or when the backend closes.

        ``timeout=None`` waits for ever. For a broadcast task, the first worker's ready result.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        async with self._watch_results(task_id) as watch:
            while True:
                meta = pick_result(await self._read_all(task_id))
                if meta is not None and meta.ready:
                    return meta
                if self._closed or not await watch.changed(seconds_left(deadline)):
                    raise self._timeout_error(task_id, timeout)

    async def collect(
        self, task_id: str, *, timeout: float, expected: int | None = None
    ) -> Mapping[str, ResultMeta]:
        """Every worker's ready result for ``task_id``, by worker hostname.

        Returns when ``expected`` results are there, or when ``timeout`` passes or the backend
        closes (with what has arrived, possibly nothing). Never raises ResultTimeout.
        """
        deadline = time.monotonic() + timeout
        async with self._watch_results(task_id) as watch:
            while True:
                found = await self._read_all(task_id)
                ready = {(m.worker or k): m for k, m in found.items() if m.ready}
                if (
                    (expected is not None and len(ready) >= expected)
                    or self._closed
                    or not await watch.changed(seconds_left(deadline))
                ):
                    return ready

    @abc.abstractmethod
    async def forget(self, task_id: str) -> None:
        """Remove everything kept for ``task_id`` (all workers). Idempotent."""

    async def chord_start(self, group_id: str, size: int) -> None:
        """Record that chord ``group_id`` has ``size`` header parts; called by the sender
        before the last header task is sent. Starting a chord again (a re-sent frozen chord)
        forgets its earlier join. ConfigurationError where chords cannot join (the default:
        see :attr:`joins_chords`)."""
        raise self._no_chords()

    async def chord_part_done(
        self, part: ChordPart, *, claim_seconds: float = CHORD_CLAIM_SECONDS
    ) -> ChordJoin | None:
        """Count ``part`` in its chord, atomically, and say whether the caller must send the
        body. The contract every joining backend keeps:

        - each header task counts once, however often it runs (a redelivered task stores its
          part again: keyed by task id and place, the first count stands);
        - when the parts counted reach the size given to :meth:`chord_start`, exactly one
          caller gets a :class:`ChordJoin` (the parts in header order and a claim token); all
          others get None. The claim lapses after ``claim_seconds``: if its holder dies
          before :meth:`chord_done`, the next part reported (a redelivered header task) claims
          it again, so the body is sent even when a worker dies between storing its result
          and sending the body;
        - after :meth:`chord_done`, late parts of the same chord are ignored (None).

        On Redis the keys and the script are Celery's, so Celery and conveyor workers finish
        each other's chords.
        """
        return await self._join_part(part, claim_seconds)

    async def _join_part(self, part: ChordPart, claim_seconds: float) -> ChordJoin | None:
        """The primitive behind :meth:`chord_part_done` (its contract), which a backend that
        joins chords writes; ConfigurationError here (the default: no joins)."""
        raise self._no_chords()

    async def chord_done(self, group_id: str, claim: str) -> bool:
        """The body of ``group_id`` was sent by the holder of ``claim``: drop the join's state
        and remember the chord as done, so no later part sends the body again. False (nothing
        changed) when ``claim`` no longer holds (it lapsed and another worker took it)."""
        raise self._no_chords()

    async def chord_body_run(self, group_id: str, send: str) -> bool:
        """Whether a worker may run the body of chord ``group_id`` that came in the send
        marked ``send`` (the claim token of the worker that sent it). The first send asked
        about is recorded, atomically; True for it (and for its redeliveries, which carry the
        same mark), False for any other: a second send of the body, after its sender died
        between sending it and :meth:`chord_done`, is recognised and not run."""
        raise self._no_chords()

    def _no_chords(self) -> ConfigurationError:
        return ConfigurationError(
            f"the result backend {self.url} cannot join chords; use redis:// or sqlite:// (or "
            "another backend that keeps results) as result_backend for chords"
        )

    async def cleanup(self, *, older_than: float) -> int:
        """Remove results done before ``older_than`` (epoch seconds); return how many.

        Backends whose results do not outlive the caller (rpc://) keep nothing and return 0.
        """
        return 0


class BatchingBackend(ResultBackend):
    """A backend that keeps results in batches: :meth:`store` is :meth:`store_many` of one,
    which each such backend implements."""

    async def store(self, request: StoreRequest) -> None:
        await self.store_many([request])

    @abc.abstractmethod
    async def store_many(self, requests: Sequence[StoreRequest]) -> None:
        """Keep every one of ``requests`` as :meth:`store` keeps one (none: nothing to do)."""
