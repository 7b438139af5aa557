"""Sends the sync API returned from before the broker confirmed them (pipelined confirms).

A plain loop of ``send_task`` that waited for each confirm would run at the broker's round trip
(a RabbitMQ confirm of a persistent message waits for a disk sync). Instead, once a route has
had one send confirmed on a connection, a sync send on it starts the publish and returns; the
publish stays here until the broker confirms it. A publish started on the private loop is a
task of that loop; one written straight from the sending thread
(``Transport.publish_from_thread``, RabbitMQ) is settled by the loop as the confirm comes.

The promise a returned send keeps is unchanged: conveyor holds the message until the broker has
it. A publish retries across reconnections as ``Transport.publish`` does, and a thread's publish
whose connection went before the confirm is published again on the loop; :meth:`Unconfirmed.
drain` waits for all of them (``App.flush``, ``App.close``, interpreter exit). A publish that
fails for good (refused, unroutable, no confirm in time, the broker gone past
``reconnect_timeout``) is logged with its task id at once and raised by the next sync send,
``App.flush`` or ``App.close``.

At most ``window`` publishes are pending: a send that would exceed it waits for one to settle.
State changes happen on the private loop, except that sending threads add their publishes
(one dict insertion, atomic) before writing them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from conveyor.errors import Unroutable
from conveyor.sync_loop import SYNC_LOOP
from conveyor.transports.base import Outgoing, Published, Wakeup

if TYPE_CHECKING:
    from conveyor.protocol.envelope import Envelope
    from conveyor.sending import Plan
    from conveyor.transports import Transport

__all__ = ["Unconfirmed"]

log = logging.getLogger("conveyor.sending")


_BATCH = 500


def _target(plan: Plan) -> tuple[str, str] | None:
    """Where a planned message goes, if it can share a batch (not delayed)."""
    route = plan.route
    return (route.exchange.name, route.routing_key) if plan.delay is None else None


class _ThreadSend(Wakeup):
    """One message a thread wrote straight onto the connection, until its confirm is read.

    Given to ``publish_from_thread`` as its wakeup: the loop calls :meth:`set` when the broker
    answers, which hands the publish back to its :class:`Unconfirmed` (a bare flag pair instead
    of the base class's locks: nobody blocks on this one).
    """

    __slots__ = ("answered", "envelope", "owner", "plan", "published", "since", "task_id")

    def __init__(self, owner: Unconfirmed, plan: Plan, task_id: str, envelope: Envelope) -> None:
        # The base class's locks are not needed: nothing waits on this wakeup.
        self.on_set = None
        self.owner = owner
        self.plan = plan
        self.task_id = task_id
        self.envelope = envelope
        self.published: Published | None = None
        self.answered = False
        self.since = time.monotonic()

    def set(self) -> None:
        self.answered = True
        if self.published is not None:
            self.owner._thread_settled(self)

    def is_set(self) -> bool:
        return self.answered

    def wait(self, timeout: float | None = None) -> bool:
        raise RuntimeError("nothing waits for a pipelined publish's wakeup")


class Unconfirmed:
    """The pending publishes of one App on one event loop, and the failures not yet raised."""

    def __init__(self, window: int) -> None:
        self.window = window
        """How many publishes may be pending at once (0: none, every send waits)."""
        self.transport: Transport | None = None
        # Each publishing task and the (task id, name) of the messages it publishes.
        self._pending: dict[asyncio.Task[Any], list[tuple[str, str]]] = {}
        self._in_tasks = 0  # messages in _pending's tasks
        self._from_threads: dict[_ThreadSend, None] = {}
        self._failures: deque[tuple[str, str, BaseException]] = deque()
        self._changed: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Publishes sending threads handed to the private loop (hand_over), not started yet.
        self._handed: deque[tuple[Plan, str, Envelope]] = deque()
        self._taking = False

    def attach(self, transport: Transport | None) -> None:
        """On the loop: the transport that publishes are resent on, and whose sends threads
        may write themselves (:meth:`publish_from_thread`)."""
        self.transport = transport
        self._loop = asyncio.get_running_loop()

    def __len__(self) -> int:
        return self._in_tasks + len(self._from_threads) + len(self._handed)

    async def add(self, publishing: Coroutine[Any, Any, Any], task_id: str, name: str) -> None:
        """Start ``publishing`` (the publish of task ``task_id`` named ``name``) and keep it
        until it settles; first wait, while ``window`` publishes are pending, for one."""
        try:
            while len(self) >= max(self.window, 1):
                await self._settling()
        except BaseException:
            publishing.close()
            raise
        self._start(publishing, task_id, name)

    def _start(
        self, publishing: Coroutine[Any, Any, Any], task_id: str, name: str, *more: tuple[str, str]
    ) -> None:
        task = asyncio.get_running_loop().create_task(publishing)
        self._pending[task] = [(task_id, name), *more]
        self._in_tasks += 1 + len(more)
        task.add_done_callback(self._settled)

    def publish_from_thread(
        self, transport: Transport, plan: Plan, task_id: str, envelope: Envelope
    ) -> bool:
        """From a thread other than the loop's: write the message straight onto the
        connection and keep it until its confirm; False if it was not written (or the window
        is full): send it through the loop."""
        if len(self) >= self.window or self._loop is None:
            return False
        send = _ThreadSend(self, plan, task_id, envelope)
        self._from_threads[send] = None  # before the frames leave: the answer may come at once
        published = plan.publish_from_thread(transport, envelope, send)
        if published is None:
            del self._from_threads[send]
            return False
        send.published = published
        if send.answered:  # the loop read the answer before ``published`` was set
            self._loop.call_soon_threadsafe(self._thread_settled, send)
        return True

    def hand_over(self, plan: Plan, task_id: str, envelope: Envelope) -> bool:
        """From a sending thread, for the private loop's sends: leave the publish to that
        loop, which starts it soon (the thread neither runs nor waits for the loop); False if
        ``window`` publishes are pending (send through the loop, which waits for room)."""
        if len(self) >= self.window or self.transport is None:
            return False
        self._handed.append((plan, task_id, envelope))
        if not self._taking:
            self._taking = True
            SYNC_LOOP.call_soon(self._take_handed)
        return True

    def _take_handed(self) -> None:
        """On the loop: start the publishes handed over, in the order they came."""
        self._taking = False  # first: a thread handing one over from now on calls again
        handed, transport = self._handed, self.transport
        while handed:
            plan, task_id, envelope = handed.popleft()
            if transport is None:
                self._failed(task_id, plan.name, RuntimeError("the App's transport was closed"))
                continue
            batch = [(plan, task_id, envelope)]
            # A run of messages to one exchange and routing key goes in one publish_many.
            target = _target(plan)
            while handed and len(batch) < _BATCH and target and _target(handed[0][0]) == target:
                batch.append(handed.popleft())
            if len(batch) == 1:
                self._start(plan.publish(transport, envelope), task_id, plan.name)
            else:
                self._start(
                    self._publish_batch(transport, batch),
                    task_id,
                    plan.name,
                    *((t, p.name) for p, t, _ in batch[1:]),
                )

    async def _publish_batch(
        self, transport: Transport, batch: list[tuple[Plan, str, Envelope]]
    ) -> None:
        """Publish a run of planned messages to one exchange and routing key (no delay) in
        one ``publish_many``; each that reached no queue fails alone (Unroutable), whatever
        else fails the publish fails them all."""
        route = batch[0][0].route
        exchange, routing_key = route.exchange.name, route.routing_key
        # Not mandatory: an unroutable message counts 0 instead of stopping the batch there.
        counts = await transport.publish_many(
            [Outgoing(envelope, exchange, routing_key) for _, _, envelope in batch]
        )
        for (plan, task_id, _), count in zip(batch, counts, strict=True):
            if not count:
                unroutable = Unroutable("", exchange=exchange, routing_key=routing_key)
                self._failed(task_id, plan.name, plan.unroutable(unroutable))

    def _thread_settled(self, send: _ThreadSend) -> None:
        """On the loop: the broker answered a thread's publish (or its connection went)."""
        if send not in self._from_threads:
            return  # settled already
        del self._from_threads[send]
        published = send.published
        assert published is not None
        try:
            routed = published.result()
        except BaseException as exc:
            self._failed(send.task_id, send.plan.name, exc)
        else:
            transport = self.transport
            if routed is None and transport is not None:
                # The connection went before the confirm: publish it again (on the new one).
                self._start(
                    send.plan.publish(transport, send.envelope),
                    send.task_id,
                    send.plan.name,
                )
        self._notify()

    def _settled(self, task: asyncio.Task[Any]) -> None:
        messages = self._pending.pop(task, [])
        self._in_tasks -= len(messages)
        error: BaseException | None = None
        if task.cancelled():
            error = asyncio.CancelledError("its publish was cancelled before the broker confirmed")
        else:
            error = task.exception()
        if error is not None:
            for task_id, name in messages:
                self._failed(task_id, name, error)
        self._notify()

    def _failed(self, task_id: str, name: str, error: BaseException) -> None:
        log.error("task %s (%s) was not sent: %s: %s", task_id, name, type(error).__name__, error)
        self._failures.append((task_id, name, error))

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            if not changed.done():
                changed.set_result(None)

    async def _settling(self, timeout: float | None = None) -> None:
        """Wait until a pending publish settles (or ``timeout`` seconds pass)."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.wait([self._changed], timeout=timeout)

    def raise_failure(self) -> None:
        """Raise the oldest failure not raised yet (once), naming its task in a note."""
        if not self._failures:
            return
        try:
            task_id, name, error = self._failures.popleft()
        except IndexError:  # another thread took it first
            return
        more = len(self._failures)
        error.add_note(
            f"conveyor: raised for task {task_id} ({name}), sent earlier, whose publish failed "
            "after the send returned"
            + (f"; {more} more such failures will be raised next" if more else "")
        )
        raise error

    async def drain(self) -> None:
        """Wait until every pending publish has settled (failures stay for raise_failure).
        A thread's publish unconfirmed after its ``timeout`` fails (as a waited one would)."""
        if self._handed:
            self._take_handed()
        while len(self):
            timeout = None
            now = time.monotonic()
            for send in list(self._from_threads.copy()):
                published = send.published
                if published is None:
                    continue
                left = send.since + published.timeout - now
                if left <= 0:
                    self._from_threads.pop(send, None)
                    self._failed(send.task_id, send.plan.name, published.expire())
                else:
                    timeout = left if timeout is None else min(timeout, left)
            if len(self):
                await self._settling(timeout)

    def cancel(self) -> None:
        """Cancel what is still pending (the loop is going away); each failure is logged."""
        self._take_handed()
        for task in list(self._pending):
            task.cancel()
        for send in list(self._from_threads.copy()):
            self._from_threads.pop(send, None)
            self._failed(
                send.task_id,
                send.plan.name,
                asyncio.CancelledError("closed before the broker confirmed its publish"),
            )
