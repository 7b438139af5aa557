"""The worker: consume queues, run tasks, store results, ack; dead-letter what it cannot run.

Life of a delivery:

1. The consumer (prefetch = concurrency x prefetch multiplier) hands it over; it waits in the
   local :class:`PriorityBuffer` until an execution slot is free, highest priority first. A
   pool that looks ahead (:attr:`Pool.lookahead`, the thread pools) gets that many slots more:
   those tasks wait in the pool for a run to end, so a thread goes from one plain function to
   the next without a trip through the event loop; the pool still runs at most
   ``concurrency`` at once. Not when a consumed queue has priorities (a task waiting in the
   pool could not be overtaken by a better one arriving after it), nor with
   ``task_track_started`` (STARTED must mean started).
2. Its signature is checked (message signing on), then it is decoded. A message refused or
   undecodable for any reason (whatever the exception), or one for a task this worker does not
   know, is dead-lettered (the queue's own dead-letter exchange, else the
   ``task_dead_letter_queue``) with the reason, worker and queue in its headers, then acked:
   never dropped, never left holding a prefetch slot (:mod:`conveyor.worker.refusal`).
3. ``expires`` in the past: not run, stored as REVOKED. An ``eta`` in the future (a client
   without delayed delivery sent it): re-published with the remaining delay. If either fails
   for a reason other than a lost broker (a delay RabbitMQ cannot hold), it is dead-lettered.
4. A task with a ``rate_limit`` waits for its turn (without holding a slot; given back if the
   worker stops meanwhile). It runs in the pool within its time limit. Its result is stored,
   then it is acked (or acked before the run if the task opted out of ``acks_late``). A retry
   re-publishes a copy with ``retries + 1`` to the same queue through delayed delivery before
   the ack.

Stopping: :meth:`Worker.stop` (or the first SIGTERM/SIGINT under :meth:`Worker.serve`) stops
consuming, gives back prefetched deliveries that have not started, and lets running tasks finish
within the grace period; a second signal (or the grace running out) cancels them and closes the
connection, so their messages return to the queue by the broker's rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from conveyor import signals
from conveyor.app import App
from conveyor.errors import (
    BrokerUnavailable,
    ConfigurationError,
    NotRegistered,
    ProtocolError,
    TaskRevoked,
)
from conveyor.protocol.dead_letters import DEAD_LETTER_HEADERS
from conveyor.protocol.task_message import TaskMessage, decode_task, encode_task
from conveyor.rate_limits import RateLimits
from conveyor.results.base import ResultBackend, StoreRequest
from conveyor.results.meta import ResultMeta, State
from conveyor.results.signed import sign_result
from conveyor.routing.entities import Broadcast, Queue
from conveyor.task import Request, Task
from conveyor.transports.base import Consumer, Delivery, Transport
from conveyor.transports.unreadable import unreadable_reason
from conveyor.worker.autoscale import Autoscaler, parse_autoscale
from conveyor.worker.buffer import PriorityBuffer
from conveyor.worker.child_limits import child_limits
from conveyor.worker.dead_lettering import DeadLetters
from conveyor.worker.hooks import SignalsMiddleware, load_middleware
from conveyor.worker.hostname import default_hostname, expand_hostname
from conveyor.worker.middleware import Middleware
from conveyor.worker.outcome import NotStarted, OnValue, Outcome
from conveyor.worker.pools import make_pool
from conveyor.worker.refusal import named_task, refusal_reason, unsettled_reason

if TYPE_CHECKING:
    from conveyor.protocol.signing import MessageSigning
from conveyor.worker.workflow import WorkflowStep, carries_workflow

__all__ = ["DEAD_LETTER_HEADERS", "Worker"]

log = logging.getLogger("conveyor.worker")

# An eta this close to now is due: clocks of processes on one machine agree, delays are rounded.
_ETA_SLACK = 0.05


def _expired(message: TaskMessage, now: float) -> bool:
    """Whether the task's ``expires`` (if any) has passed at ``now`` (epoch seconds)."""
    return message.expires is not None and message.expires.timestamp() <= now


def _not_due(message: TaskMessage, now: float) -> bool:
    """Whether the task's ``eta`` (if any) is still ahead of ``now``, beyond the slack."""
    return message.eta is not None and message.eta.timestamp() > now + _ETA_SLACK


def _retried(message: TaskMessage, countdown: float) -> TaskMessage:
    """The copy of ``message`` that retries it in ``countdown`` seconds."""
    return replace(
        message,
        retries=message.retries + 1,
        eta=datetime.now(UTC) + timedelta(seconds=countdown) if countdown > 0 else None,
    )


class Worker:
    """Consumes ``queues`` (names resolved by the app's router; default: every queue declared in
    ``task_queues``, or ``task_default_queue`` when none is, as Celery's worker does) and runs
    the app's tasks.

    ``hostname`` may use ``%h``/``%n``/``%d``. ``concurrency`` bounds tasks running at once
    (default ``worker_concurrency``, else the CPU count); ``pool`` is ``asyncio``, ``threads``
    or ``processes`` (the latter needs ``app_spec``, the ``module:attr`` children import;
    ``max_tasks_per_child``/``max_memory_per_child`` KiB replace its children, default the
    ``worker_max_*_per_child`` settings). ``autoscale`` ``(MAX, MIN)`` or ``"MAX,MIN"`` sizes
    the pool by demand (see ``autoscale.py``; ``concurrency`` is then MAX).
    Hooks: the ``worker_middleware`` setting's middleware, then ``middleware``, then (while
    any receiver is connected) the one sending :mod:`conveyor.signals`. Raises
    ConfigurationError for an unknown pool or queue, or a middleware entry that cannot be
    loaded.
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        hostname: str | None = None,
        concurrency: int | None = None,
        pool: str | None = None,
        prefetch_multiplier: int | None = None,
        shutdown_grace: float | None = None,
        middleware: Sequence[Middleware] = (),
        app_spec: str | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        autoscale: str | tuple[int, int] | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.autoscale = parse_autoscale(autoscale) if autoscale is not None else None
        if self.autoscale is not None:
            concurrency = self.autoscale[0]  # prefetch and slots for the most it may run
        declared = tuple(entity.name for entity in conf.task_queues)
        self.queue_names = tuple(queues) if queues else declared or (conf.task_default_queue,)
        self.hostname = expand_hostname(hostname) if hostname else default_hostname()
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be 1 or more, got {self.concurrency}")
        multiplier = (
            prefetch_multiplier
            if prefetch_multiplier is not None
            else conf.worker_prefetch_multiplier
        )
        if multiplier < 0:
            raise ConfigurationError(f"prefetch multiplier must be 0 or more, got {multiplier}")
        self.prefetch = self.concurrency * multiplier
        self.shutdown_grace = (
            shutdown_grace if shutdown_grace is not None else conf.worker_shutdown_grace
        )
        self.pool_name = pool or conf.worker_pool
        limits = child_limits(conf, max_tasks_per_child, max_memory_per_child)
        self.pool = make_pool(self.pool_name, self.concurrency, app_spec, limits)
        self.middleware = (*load_middleware(conf.worker_middleware), *middleware)
        self._with_signals = (*self.middleware, SignalsMiddleware())  # while any listen
        self.worker_id = f"{self.hostname}.{uuid.uuid4().hex[:8]}"
        self.consumed_queues: dict[str, Queue] = {}
        self.broadcast_queues: dict[str, Broadcast] = {}
        self.processed = 0
        self.failure: BaseException | None = None
        self._transport: Transport | None = None
        self._backend: ResultBackend | None = None
        self._consumer: Consumer | None = None
        self._buffer = PriorityBuffer()
        self._free_slots = self.concurrency  # look-ahead slots are added by start()
        self._running: dict[asyncio.Task[None], Delivery] = {}
        self._holding: set[int] = set()  # id() of the deliveries holding a slot
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._immediate = False
        self._signals = 0
        self._service: list[asyncio.Task[None]] = []
        self._stop_task: asyncio.Task[None] | None = None
        self._dead_letters = DeadLetters(self.hostname, conf.task_dead_letter_queue)
        self._signing: MessageSigning | None = None
        self._rate_limits = RateLimits(default=conf.task_default_rate_limit)
        self.autoscaler: Autoscaler | None = None
        self._workflow = WorkflowStep(app, self.hostname)

    def _hook(self, name: str, *args: Any, reverse: bool = False) -> None:
        hooks = self._with_signals if signals.listening() else self.middleware
        if not hooks:
            return
        for mw in reversed(hooks) if reverse else hooks:
            try:
                getattr(mw, name)(self, *args)
            except Exception:
                log.exception("middleware %r failed in %s", mw, name)

    async def start(self) -> None:
        """Connect, declare the consumed queues' topology, and start consuming.

        Raises ConfigurationError/RoutingError for a queue name the router cannot resolve,
        BrokerUnavailable if the broker cannot be reached.
        """
        self._signing = self.app.signing
        transport = self._transport = await self.app.atransport()
        if transport.capabilities.lowest_priority_first:
            self._buffer = PriorityBuffer(lowest_first=True)
        self._backend = await self.app.abackend()
        if self.autoscale is not None:
            await self.pool.resize(self.autoscale[1])  # it starts small
        await self.pool.start()
        router = self.app.router
        names: list[str] = []
        for name in self.queue_names:
            entity: Queue | Broadcast = router.queue(name)
            if isinstance(entity, Broadcast):
                await self.app.declare(transport, entity)
                own = entity.queue_for(self.worker_id)
                await transport.declare_queue(own)
                self.broadcast_queues[own.name] = entity
                self.consumed_queues[own.name] = own
                names.append(own.name)
            else:
                await self.app.declare(transport, entity)
                self.consumed_queues[entity.name] = entity
                names.append(entity.name)
        if not self.app.conf.task_track_started and not any(
            queue.max_priority for queue in self.consumed_queues.values()
        ):
            self._free_slots += self.pool.lookahead
        self._consumer = await transport.consume(names, prefetch=self.prefetch)
        loop = asyncio.get_running_loop()
        self._service = [loop.create_task(self._receive(self._consumer))]
        if self.app.conf.result_expires:
            self._service.append(loop.create_task(self._expire_results()))
        if self.autoscale is not None:
            self.autoscaler = Autoscaler(
                self.pool, *self.autoscale, lambda: len(self._running) + len(self._buffer)
            )
            self._service.append(loop.create_task(self.autoscaler.run()))
        log.info(
            "worker %s consuming %s (pool %s, concurrency %d, prefetch %d)",
            self.hostname,
            ", ".join(self.queue_names),
            self.pool_name,
            self.concurrency,
            self.prefetch,
        )
        self._hook("worker_started")

    async def _receive(self, consumer: Consumer) -> None:
        try:
            async for delivery in consumer:
                self._buffer.push(delivery)
                self._start_ready()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("worker %s lost its consumer, stopping: %s", self.hostname, exc)
            self.failure = exc
            self.request_stop()
            return
        if not self._stopping.is_set():
            self.failure = BrokerUnavailable(
                f"worker {self.hostname}: the broker ended the subscription to "
                f"{', '.join(consumer.queues)}"
            )
            log.error("%s; stopping", self.failure)
            self.request_stop()

    def _start_ready(self) -> None:
        """Start handling buffered deliveries, best first, while execution slots are free.

        Called when a delivery arrives and when a slot frees up, so a delivery starts in the
        same event-loop turn as either (no dispatcher task to wake in between).
        """
        if self._stopping.is_set():
            return
        buffer = self._buffer
        while self._free_slots > 0 and buffer:
            delivery = buffer.pop_nowait()
            self._free_slots -= 1
            task = asyncio.get_running_loop().create_task(self._handle(delivery))
            self._running[task] = delivery
            self._holding.add(id(delivery))
            task.add_done_callback(self._finished)

    def _release_slot(self, delivery: Delivery | None) -> None:
        """Free the slot ``delivery`` holds, once (its run may end before its handling)."""
        if id(delivery) in self._holding:
            self._holding.discard(id(delivery))
            self._free_slots += 1
            self._start_ready()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._release_slot(self._running.pop(task, None))
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "worker %s: handling a delivery failed", self.hostname, exc_info=task.exception()
            )

    async def _expire_results(self) -> None:
        expires = self.app.conf.result_expires
        assert expires
        interval = min(float(expires), 60.0)
        while True:
            assert self._backend is not None
            try:
                removed = await self._backend.cleanup(older_than=time.time() - float(expires))
                if removed:
                    log.info("removed %d results older than %g s", removed, expires)
            except Exception:
                log.exception("could not remove expired results")
            await asyncio.sleep(interval)

    async def _ack(self, delivery: Delivery) -> None:
        assert self._transport is not None
        await self._transport.ack(delivery)

    async def _store(self, request: Request, meta: ResultMeta, delivery: Delivery) -> None:
        """Store ``meta`` where ``request`` asked; a value JSON cannot hold is stored as the
        FAILURE that says so."""
        backend = self._backend
        assert backend is not None
        signing = self._signing
        kept = StoreRequest(
            meta,
            reply_to=request.reply_to,
            correlation_id=request.correlation_id or request.id,
            per_worker=delivery.queue in self.broadcast_queues,
        )
        try:
            if signing is not None:
                kept = replace(kept, meta=sign_result(meta, signing))
            await backend.store(kept)
        except ProtocolError as exc:
            log.error("task %s[%s]: %s", request.task, request.id, exc)
            bad = ResultMeta.failure(request.id, exc, None, worker=self.hostname, task=request.task)
            await backend.store(
                replace(kept, meta=sign_result(bad, signing) if signing is not None else bad)
            )

    async def dead_letter(self, delivery: Delivery, reason: str, task_name: str | None) -> None:
        """Move ``delivery`` to its queue's dead-letter exchange, or else to the
        ``task_dead_letter_queue``, with the reason, this worker and the queue in its headers;
        then ack it. Logged as an error naming the task, queue and worker.
        """
        transport = self._transport
        assert transport is not None
        queue = self.consumed_queues.get(delivery.queue)
        where = await self._dead_letters.send(transport, delivery, reason, queue)
        await self._ack(delivery)
        log.error(
            "dead-lettered task %r from queue %r on worker %s to %s: %s",
            task_name or "?",
            delivery.queue,
            self.hostname,
            where,
            reason,
        )
        self._hook("dead_lettered", delivery, reason)

    async def _handle(self, delivery: Delivery) -> None:
        unreadable = unreadable_reason(delivery.envelope)
        if unreadable is not None:  # the transport could not read it: say why, not its type
            await self.dead_letter(delivery, f"unreadable message: {unreadable}", None)
            return
        try:
            if self._signing is not None:
                self._signing.verify(delivery.envelope)
            message = decode_task(delivery.envelope, self.app.conf.accept_content)
        except Exception as exc:  # whatever decoding raises, the message must not stay unacked
            await self.dead_letter(delivery, refusal_reason(exc), named_task(delivery.envelope))
            return
        task = self.app.tasks.get(message.task)
        if task is None:
            reason = f"unknown task {message.task!r}: not registered on this worker"
            if not message.ignore_result:
                # The caller hears at once, as from a Celery worker, instead of timing out.
                unknown = NotRegistered(
                    f"task {message.task!r} is not registered on worker {self.hostname} "
                    f"(queue {delivery.queue!r}); the message was dead-lettered"
                )
                meta = ResultMeta.failure(
                    message.id, unknown, None, worker=self.hostname, task=message.task
                )
                await self._store(self._request(delivery, message), meta, delivery)
            await self.dead_letter(delivery, reason, message.task)
            return
        if carries_workflow(message):
            assert self._backend is not None
            refusal = self._workflow.refusal(message, self._backend)
            if refusal is not None:  # never run and forgotten: the caller's result says why
                error = ProtocolError(refusal)
                meta = ResultMeta.failure(
                    message.id, error, None, worker=self.hostname, task=task.name
                )
                await self._store(self._request(delivery, message), meta, delivery)
                await self.dead_letter(delivery, refusal, message.task)
                return
        backend = self._backend
        if message.headers and backend and await self._workflow.second_send(message, backend):
            await self._ack(delivery)
            return
        await self._execute(delivery, message, task)

    def _request(self, delivery: Delivery, message: TaskMessage) -> Request:
        return Request(
            id=message.id,
            task=message.task,
            args=message.args,
            kwargs=message.kwargs,
            retries=message.retries,
            eta=message.eta.isoformat() if message.eta is not None else None,
            expires=message.expires.isoformat() if message.expires is not None else None,
            root_id=message.root_id,
            parent_id=message.parent_id,
            group=message.group,
            reply_to=message.reply_to,
            correlation_id=message.correlation_id,
            origin=message.origin,
            hostname=self.hostname,
            delivery_info={
                "exchange": delivery.exchange,
                "routing_key": delivery.routing_key,
                "queue": delivery.queue,
                "priority": delivery.envelope.priority,
                "redelivered": delivery.redelivered,
            },
            headers=message.headers,
        )

    async def _republish(
        self, delivery: Delivery, message: TaskMessage, delay: float | None
    ) -> None:
        transport = self._transport
        assert transport is not None
        envelope = encode_task(message, self.app.conf.task_serializer)
        if self._signing is not None:
            envelope = self._signing.sign(envelope)
        await transport.publish(
            envelope,
            exchange="",
            routing_key=delivery.queue,
            delay=delay if delay and delay > 0 else None,
        )

    async def _execute(self, delivery: Delivery, message: TaskMessage, task: Task) -> None:
        """Steps 3 and 4 of the module's text for a decoded delivery of a known task.

        The fast path (due, not expired) awaits only the early ack (``acks_late`` off), the
        STARTED store (``task_track_started``), the run, and :meth:`_settle`: every other step
        is a plain call.
        """
        request = self._request(delivery, message)
        store = not (task.ignore_result or message.ignore_result)
        now = time.time()
        if _expired(message, now):
            step = self._revoke_expired(delivery, message, task, request, store)
            await self._settle_unrun(delivery, message, step)
            return
        if _not_due(message, now):
            await self._settle_unrun(delivery, message, self._postpone(delivery, message, now))
            return
        if task.rate_limit is not None:
            wait = self._rate_limits.reserve(task.name, task.rate_limit)
            if wait > 0 and not await self._wait_turn(delivery, wait):
                return
        if not task.acks_late:
            await self._ack(delivery)
        if store and self.app.conf.task_track_started:
            await self._store(request, self._started(message, task), delivery)
        self._hook("before_task", request)
        limit = message.timelimit[0] or task.time_limit
        soft = message.timelimit[1] or task.soft_time_limit
        on_value = (
            self._thread_store(message, task, request)
            if store and self._thread_may_store(delivery, task, request, limit or soft)
            else None
        )
        try:
            outcome = await self.pool.run(task, request, limit, on_value, soft)
        except NotStarted:  # the worker is stopping: it goes back with the prefetched ones
            await self._give_back(delivery)
            return
        # The run is over: the next task may start while this one's result is stored and acked
        # (unacked messages stay bounded by the prefetch).
        self._release_slot(delivery)
        await self._settle(delivery, message, task, request, outcome, store)
        self.processed += 1
        self._hook("after_task", request, outcome, reverse=True)

    async def _wait_turn(self, delivery: Delivery, wait: float) -> bool:
        """Wait ``wait`` seconds for a rate-limited run's turn without holding an execution
        slot; False (its message given back) if the worker stops first."""
        self._release_slot(delivery)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._stopping.wait()
        if self._stopping.is_set():
            await self._give_back(delivery)
            return False
        return True

    async def _revoke_expired(
        self, delivery: Delivery, message: TaskMessage, task: Task, request: Request, store: bool
    ) -> None:
        """Not run: ``expires`` passed. Stored as REVOKED (if results are kept), then acked."""
        assert message.expires is not None
        reason = TaskRevoked(
            f"task {task.name}[{message.id}] expired at {message.expires.isoformat()} "
            "before it could run"
        )
        log.warning("%s", reason)
        outcome = Outcome(State.REVOKED, error=reason)
        if store:
            await self._store(request, self._failure(message, task, outcome), delivery)
        if carries_workflow(message):  # the chain stops and a chord counts it as failed
            assert self._backend is not None
            await self._workflow.failed(message, reason, None, self._backend)
        await self._ack(delivery)
        self._hook("after_task", request, outcome, reverse=True)

    async def _settle_unrun(
        self, delivery: Delivery, message: TaskMessage, step: Coroutine[Any, Any, None]
    ) -> None:
        """Await ``step``, which settles a message without running it (revoke, postpone); if it
        fails for a reason other than a lost broker (which gives the message back anyway), the
        message is dead-lettered with that reason instead of staying unacked."""
        try:
            await step
        except BrokerUnavailable:
            raise
        except Exception as exc:
            await self.dead_letter(delivery, unsettled_reason(exc), message.task)

    async def _postpone(self, delivery: Delivery, message: TaskMessage, now: float) -> None:
        """Not due yet (a client without delayed delivery sent it): re-published with the
        remaining delay, then acked."""
        assert message.eta is not None
        await self._republish(delivery, message, message.eta.timestamp() - now)
        await self._ack(delivery)

    async def _give_back(self, delivery: Delivery) -> None:
        """The pool withdrew the run before it started: free its slot, requeue its message."""
        self._release_slot(delivery)
        transport = self._transport
        assert transport is not None
        with contextlib.suppress(Exception):
            await transport.nack(delivery, requeue=True)

    def _thread_may_store(
        self, delivery: Delivery, task: Task, request: Request, limit: float | None
    ) -> bool:
        """Whether the pool thread that runs ``task`` may store its result itself (rpc:// on
        RabbitMQ), saving the hop back to this loop before the caller hears. Each term:

        - ``not task.is_async``: only a plain function runs in a pool thread;
        - ``limit is None``: a time limit's interrupt could land in the middle of the store;
        - ``request.reply_to``: the one result that can go from a thread is a reply;
        - not a broadcast queue: a per-worker result is stored the loop's way only;
        - the backend (there, and) ``stores_from_thread`` now: after its first reply went out
          the usual way, which opens what the thread's stores use.

        (The caller checks first that the result is kept at all.)
        """
        backend = self._backend
        return (
            not task.is_async
            and limit is None
            and bool(request.reply_to)
            and delivery.queue not in self.broadcast_queues
            and backend is not None
            and backend.stores_from_thread
        )

    def _started(self, message: TaskMessage, task: Task) -> ResultMeta:
        """The STARTED record (``task_track_started``): which process runs it, where."""
        return ResultMeta(
            message.id,
            State.STARTED,
            {"pid": os.getpid(), "hostname": self.hostname},
            worker=self.hostname,
            task=task.name,
            retries=message.retries,
        )

    def _success(self, message: TaskMessage, task: Task, value: Any) -> ResultMeta:
        return ResultMeta.success(
            message.id, value, worker=self.hostname, task=task.name, retries=message.retries
        )

    def _failure(self, message: TaskMessage, task: Task, outcome: Outcome) -> ResultMeta:
        """The RETRY, FAILURE or REVOKED record of ``outcome`` (its state, error, traceback)."""
        assert outcome.error is not None
        return ResultMeta.failure(
            message.id,
            outcome.error,
            outcome.traceback,
            state=outcome.state,
            worker=self.hostname,
            task=task.name,
            retries=message.retries,
        )

    def _thread_store(self, message: TaskMessage, task: Task, request: Request) -> OnValue:
        """What a pool thread calls with a plain function's value: store it from there if the
        backend can (``ResultBackend.store_from_thread``); any trouble leaves it to the loop."""
        backend = self._backend
        assert backend is not None
        reply_to = request.reply_to
        correlation_id = request.correlation_id or request.id

        signing = self._signing

        def store(value: Any) -> bool:
            try:
                meta = self._success(message, task, value)
                if signing is not None:
                    meta = sign_result(meta, signing)
                return backend.store_from_thread(
                    StoreRequest(meta, reply_to=reply_to, correlation_id=correlation_id)
                )
            except Exception:
                return False

        return store

    async def _settle(
        self,
        delivery: Delivery,
        message: TaskMessage,
        task: Task,
        request: Request,
        outcome: Outcome,
        store: bool,
    ) -> None:
        """Log how the run ended, re-publish a retry, store the result (if kept), then ack
        (``acks_late``; otherwise it was acked before the run)."""
        if outcome.state is State.SUCCESS:
            log.info("task %s[%s] succeeded in %.4f s", task.name, message.id, outcome.runtime)
            if store and not outcome.stored:
                meta = self._success(message, task, outcome.value)
                await self._store(request, meta, delivery)
        else:
            if outcome.state is State.RETRY:
                countdown = outcome.countdown or 0.0
                log.warning(
                    "task %s[%s] will retry in %g s (attempt %d): %r",
                    task.name,
                    message.id,
                    countdown,
                    message.retries + 1,
                    outcome.error,
                )
                await self._republish(delivery, _retried(message, countdown), countdown)
            else:
                log.error(
                    "task %s[%s] failed: %r\n%s",
                    task.name,
                    message.id,
                    outcome.error,
                    (outcome.traceback or "").rstrip(),
                )
            if store:
                await self._store(request, self._failure(message, task, outcome), delivery)
        if outcome.state is not State.RETRY and carries_workflow(message):
            assert self._backend is not None
            if outcome.state is State.SUCCESS:
                await self._workflow.succeeded(message, outcome.value, self._backend)
            elif outcome.error is not None:
                await self._workflow.failed(
                    message, outcome.error, outcome.traceback, self._backend
                )
        if task.acks_late:
            transport = self._transport
            assert transport is not None
            await transport.ack(delivery)

    def request_stop(self, *, immediate: bool = False) -> None:
        """Ask the worker to stop (graceful, or at once); safe from signal handlers."""
        self._immediate = self._immediate or immediate
        self._stopping.set()

    async def stop(self, *, immediate: bool = False) -> None:
        """Stop consuming, give back deliveries not started, and let running tasks finish within
        ``shutdown_grace`` seconds (``immediate``: cancel them now); then close the connection.
        Idempotent.
        """
        self.request_stop(immediate=immediate)
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        self._hook("worker_stopping")
        if self._consumer is not None:
            try:
                await self._consumer.cancel()
            except Exception as exc:
                log.warning("worker %s: cancelling the consumer failed: %s", self.hostname, exc)
        for task in self._service:
            task.cancel()
        for task in self._service:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        transport = self._transport
        waiting = self._buffer.drain()
        if transport is not None:
            for delivery in waiting:
                with contextlib.suppress(Exception):
                    await transport.nack(delivery, requeue=True)
        # Handed to the pool but not started: their runs raise NotStarted and nack them.
        withdrawn = self.pool.withdraw_waiting()
        if waiting or withdrawn:
            log.info("gave back %d prefetched messages", len(waiting) + withdrawn)
        if self._running and not self._immediate:
            log.info(
                "waiting up to %g s for %d running tasks", self.shutdown_grace, len(self._running)
            )
            deadline = time.monotonic() + self.shutdown_grace
            while self._running and not self._immediate:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await asyncio.wait(list(self._running), timeout=min(remaining, 0.1))
        if self._running:
            log.warning(
                "stopping %d running tasks now; their messages go back to the queue",
                len(self._running),
            )
            running = list(self._running)
            for task in running:
                task.cancel()
            await asyncio.wait(running, timeout=1.0)
        await self.pool.close()
        try:
            await self.app.aclose()
        except Exception as exc:
            log.warning("worker %s: closing the connection failed: %s", self.hostname, exc)
        self._stopped.set()
        log.info("worker %s stopped after %d tasks", self.hostname, self.processed)

    async def run(self) -> None:
        """Start, then serve until :meth:`request_stop` or :meth:`stop`, then stop.

        Raises the error that ended consuming (for instance BrokerUnavailable when the
        connection is lost for good), after stopping, so a supervisor can restart the worker.
        """
        try:
            await self.start()
            await self._stopping.wait()
        finally:
            await asyncio.shield(self.stop())
        if self.failure is not None:
            raise self.failure

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.warning(
                "worker %s got %s: finishing running tasks (up to %g s); signal again to stop "
                "at once",
                self.hostname,
                signal.Signals(signum).name,
                self.shutdown_grace,
            )
            self.request_stop()
        else:
            log.warning("worker %s: stopping at once", self.hostname)
            self.request_stop(immediate=True)

    async def serve(self) -> None:
        """:meth:`run` with SIGTERM and SIGINT handlers: the first stops gracefully, the
        second at once."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
