"""The beat loop: hold the lease, send each entry's due times once, record every fire.

One :class:`Beat` runs per process (``conveyor beat``, or inside a worker with ``-B``); any
number may run against one broker. Each round the beat takes or renews the lease; the leader
computes which due times to send (:mod:`conveyor.beat.policy`), claims them in the store,
sends each with ``asend_task`` under the task id derived from (beat, entry, due time), and
confirms them. A successor finding a claim without its confirmation resolves it before
anything else: it never sends that due time under another id (see the README's "Periodic
tasks" for the exactly-once argument).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from conveyor.beat.entries import Entry, Overlap, parse_schedule, task_id_for
from conveyor.beat.policy import due_times, jitter_for, skip_for_overlap
from conveyor.beat.store import BeatStore, EntryState, Fire
from conveyor.beat.stores import open_store
from conveyor.errors import BrokerUnavailable, ConveyorError, TransportError
from conveyor.results import State

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.results.async_result import AsyncResult

__all__ = ["Beat", "beat_name", "serve_beside", "serve_until_signalled"]

log = logging.getLogger("conveyor.beat")

_SEND_BATCH = 256
_RETRYABLE = (BrokerUnavailable, TransportError, OSError)


def beat_name(app: App) -> str:
    """The name the lease and states are kept under: ``beat_name``, else the app's main name."""
    return app.conf.beat_name or app.main or "conveyor"


class Beat:
    """The scheduler of ``app``'s ``beat_schedule``.

    ``clock`` returns the current time (aware, UTC): tests inject one and drive :meth:`tick`.
    ``store`` defaults to the one for the app's broker. Raises ConfigurationError (at
    construction) for a malformed ``beat_schedule``.
    """

    def __init__(
        self,
        app: App,
        *,
        store: BeatStore | None = None,
        clock: Callable[[], datetime] | None = None,
        holder: str | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.name = beat_name(app)
        self.entries: tuple[Entry, ...] = parse_schedule(conf.beat_schedule, conf.timezone)
        self.lease = float(conf.beat_lease)
        self.grace = float(conf.beat_grace)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._store = store
        self.leading = False
        self._by_name = {e.name: e for e in self.entries}
        self._states: dict[str, EntryState] = {}
        self._heap: list[tuple[datetime, str]] = []
        self._paused: frozenset[str] = frozenset()
        self._retry: list[Fire] = []
        # Per entry with overlap "skip": the task id last sent, and its result handle if sent here.
        self._previous: dict[str, tuple[str, AsyncResult | None]] = {}
        self._stopping = asyncio.Event()
        self._opened = False
        self._renewed = 0.0

    @property
    def store(self) -> BeatStore:
        if self._store is None:
            self._store = open_store(self.app, self.name, lease=self.lease)
        return self._store

    async def serve(self) -> None:
        """Run rounds until :meth:`stop`; give the lease up on the way out."""
        log.info(
            "beat %r (%s) started with %d entries, lease %g s",
            self.name,
            self.holder,
            len(self.entries),
            self.lease,
        )
        try:
            while not self._stopping.is_set():
                try:
                    delay = await self.tick()
                except _RETRYABLE as exc:
                    log.warning("beat round failed (%s); retrying", exc)
                    self._step_down("the broker failed")
                    delay = min(1.0, self.lease / 5)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), max(delay, 0.0))
        finally:
            with contextlib.suppress(ConveyorError, OSError):
                if self.leading:
                    await self.store.release(self.holder)
                    log.info("beat %r: %s gave up the lease", self.name, self.holder)
            self.leading = False
            self._opened = False
            await self.store.close()

    def stop(self) -> None:
        """Ask :meth:`serve` to return after the current round. Any coroutine of its loop."""
        self._stopping.set()

    async def tick(self) -> float:
        """One round: renew or take the lease; if leading, send what is due. Returns the
        seconds until the next round is needed."""
        store = self.store
        if not self._opened:
            await store.open()
            self._opened = True
        poll = min(1.0, self.lease / 5)
        held = await store.hold(self.holder)
        self._renewed = time.monotonic()
        if not held:
            self._step_down("another beat holds the lease")
            return poll
        if not self.leading:
            log.info("beat %r: %s is now the leader", self.name, self.holder)
            self.leading = True
            await self._take_over()
        controls = await store.take_controls(self.holder)
        self._paused = controls.paused
        now = self.clock()
        fires = self._retry + self._due(now)
        self._retry = []
        for name in controls.triggers:
            entry = self._by_name.get(name)
            if entry is None:
                log.warning("beat %r: trigger for unknown entry %r ignored", self.name, name)
                continue
            fires.append(Fire(name, now, task_id_for(self.name, name, now), entry.signature))
        if fires and not await self._fire(fires):
            return poll
        renew = self.lease / 3
        if self._heap:
            return min(renew, (self._heap[0][0] - self.clock()).total_seconds())
        return renew

    def _log_fire(self, level: int, what: str, fire: Fire, *args: object) -> None:
        """Log ``what`` about ``fire``; ``what`` names the entry, due time and task id with
        ``{fire}`` and may take more %-arguments."""
        detail = f"{fire.entry} due {fire.due.isoformat()} (task {fire.task_id})"
        log.log(level, f"beat %r: {what.replace('{fire}', '%s')}", self.name, detail, *args)

    async def _renew(self) -> bool:
        """Renew the lease if a third of it has passed since (a long round must not let it
        lapse); False, having stepped down, if it is lost."""
        if time.monotonic() - self._renewed < self.lease / 3:
            return True
        held = await self.store.hold(self.holder)
        self._renewed = time.monotonic()
        if not held:
            self._step_down("another beat took the lease")
        return held

    def _step_down(self, why: str) -> None:
        if self.leading:
            log.warning("beat %r: %s is no longer the leader (%s)", self.name, self.holder, why)
        self.leading = False
        self._states = {}
        self._heap = []
        self._retry = []
        self._previous = {}

    async def _take_over(self) -> None:
        """Load the states, forget removed entries, resolve fires claimed but not confirmed."""
        doubtful = await self._load_states()
        now = self.clock()
        self._heap = []
        for entry in self.entries:
            state = self._states.get(entry.name)
            if state is None or state.last_due is None:
                first = now  # a new entry: see at once what it owes
            else:
                first = entry.schedule.next_after(state.last_due, entry.zone)
            heapq.heappush(self._heap, (first, entry.name))
        for fire in doubtful:
            if not await self._renew():
                return
            await self._resolve(fire)

    async def _load_states(self) -> list[Fire]:
        """Read the stored states of the current entries (forgetting those of removed entries
        and of entries whose schedule changed); return the fires claimed but not confirmed."""
        states = await self.store.load()
        stale = [name for name in states if name not in self._by_name]
        if stale:
            log.info("beat %r: forgetting removed entries %s", self.name, ", ".join(stale))
        self._states = {}
        doubtful: list[Fire] = []
        for entry in self.entries:
            state = states.get(entry.name)
            if state is None:
                continue
            if state.signature != entry.signature:
                log.info("beat %r: %r has a new schedule, due from now", self.name, entry.name)
                stale.append(entry.name)
                continue
            self._states[entry.name] = state
            if state.task_id is not None:
                self._previous[entry.name] = (state.task_id, None)
            if not state.confirmed and state.last_due is not None and state.task_id is not None:
                doubtful.append(Fire(entry.name, state.last_due, state.task_id, entry.signature))
        if stale:
            await self.store.forget(self.holder, stale)
        return doubtful

    async def _resolve(self, fire: Fire) -> None:
        """Confirm a doubtful fire a worker already received; else send it again, same id."""
        if await self._was_received(fire.task_id):
            self._log_fire(logging.INFO, "{fire} was received before the last leader died", fire)
            await self.store.confirm(self.holder, [fire])
            return
        self._log_fire(
            logging.WARNING,
            "the last leader claimed {fire} but did not confirm it: sending it again with the "
            "same task id",
            fire,
        )
        self._retry.append(fire)

    async def _was_received(self, task_id: str) -> bool:
        """True if the result backend knows ``task_id`` (a worker took the message)."""
        if self.app.backend_url.startswith("rpc:"):
            return False  # rpc:// replies go to the sender alone: nothing to look up
        try:
            return await self.app.result(task_id).astate() is not State.PENDING
        except ConveyorError:
            return False

    def _schedule_next(self, entry: Entry, now: datetime) -> None:
        state = self._states.get(entry.name)
        after = state.last_due if state is not None and state.last_due is not None else now
        nxt = entry.schedule.next_after(max(after, now), entry.zone)
        heapq.heappush(self._heap, (nxt, entry.name))

    def _due(self, now: datetime) -> list[Fire]:
        """The fires due at ``now``, by each entry's catch-up policy (paused: passed over)."""
        fires: list[Fire] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, name = heapq.heappop(heap)
            entry = self._by_name[name]
            state = self._states.get(name)
            last = state.last_due if state is not None else None
            dues = due_times(entry, last_due=last, now=now, grace=self.grace)
            paused = name in self._paused
            for due in dues:
                task_id = task_id_for(self.name, name, due)
                fires.append(Fire(name, due, task_id, entry.signature, sent=not paused))
            if dues:
                self._states[name] = fires[-1].state(confirmed=True)
            self._schedule_next(entry, now)
        return fires

    async def _fire(self, fires: list[Fire]) -> bool:
        """Claim, send and confirm ``fires``, at most one per entry at a time (an entry's state
        holds one claim); False if the lease was lost before a claim."""
        while fires:
            layer: dict[str, Fire] = {}
            rest: list[Fire] = []
            for fire in fires:
                if fire.entry in layer:
                    rest.append(fire)
                else:
                    layer[fire.entry] = fire
            if not await self._renew():
                return False
            if not await self._fire_layer([await self._overlap(f) for f in layer.values()]):
                return False
            fires = rest
        return True

    async def _fire_layer(self, fires: list[Fire]) -> bool:
        if not await self.store.claim(self.holder, fires):
            self._step_down("the lease lapsed before the claim")
            return False
        sent: list[Fire] = []
        for start in range(0, len(fires), _SEND_BATCH):
            if not await self._renew():
                return False  # the claims stay unconfirmed: the successor resolves them
            batch = fires[start : start + _SEND_BATCH]
            results = await asyncio.gather(*(self._send(f) for f in batch))
            sent.extend(f for f, ok in zip(batch, results, strict=True) if ok)
        if sent:
            await self.store.confirm(self.holder, sent)
        return True

    async def _overlap(self, fire: Fire) -> Fire:
        """``fire``, or ``fire`` passed over when the entry's previous task still runs."""
        entry = self._by_name[fire.entry]
        if not fire.sent or entry.overlap is Overlap.ALLOW:
            return fire
        previous = self._previous.get(fire.entry)
        finished = previous is None or await self._finished(*previous)
        if not skip_for_overlap(entry, finished):
            return fire
        running = previous[0] if previous else None
        self._log_fire(logging.INFO, "skipping {fire}: task %s has not finished", fire, running)
        return Fire(fire.entry, fire.due, fire.task_id, fire.signature, sent=False)

    async def _finished(self, task_id: str, result: AsyncResult | None) -> bool:
        """True if task ``task_id`` has finished, as far as this process can tell."""
        try:
            if result is not None:
                return await result.aready()
            if self.app.backend_url.startswith("rpc:"):
                return True  # sent by an earlier leader: only it could hear the reply
            return await self.app.result(task_id).aready()
        except ConveyorError:
            return True

    async def _send(self, fire: Fire) -> bool:
        """Send ``fire``; True once the broker has it (or it can never be sent)."""
        if not fire.sent:
            return True
        entry = self._by_name[fire.entry]
        options: dict[str, Any] = dict(entry.options)
        delay = jitter_for(f"{self.name}/{fire.entry}/{fire.task_id}", entry.jitter)
        if delay:
            options["countdown"] = float(options.get("countdown") or 0) + delay
        try:
            result = await self.app.asend_task(
                entry.task, entry.args, entry.kwargs, task_id=fire.task_id, **options
            )
        except _RETRYABLE as exc:
            self._log_fire(logging.WARNING, "sending {fire} failed (%s); retrying", fire, exc)
            self._retry.append(fire)
            return False
        except ConveyorError as exc:
            self._log_fire(logging.ERROR, "{fire} cannot be sent: %s", fire, exc)
            return True
        if entry.overlap is Overlap.SKIP:
            self._previous[fire.entry] = (fire.task_id, result)
        self._log_fire(logging.INFO, "sent {fire}", fire)
        return True


async def serve_beside(main: Coroutine[Any, Any, None], beat: Beat) -> None:
    """Run ``beat`` while ``main`` (a worker's ``serve()``) runs; stop it when ``main`` ends."""
    running = asyncio.create_task(beat.serve())
    try:
        await main
    finally:
        beat.stop()
        await running
        await beat.app.aclose()


async def serve_until_signalled(beat: Beat) -> None:
    """:meth:`Beat.serve` with SIGTERM and SIGINT handlers that stop it (the lease is given up)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, beat.stop)
    try:
        await beat.serve()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await beat.app.aclose()
