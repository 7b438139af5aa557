"""``rpc://``: results travel back as messages to the caller's own reply queue.

The caller's backend declares an exclusive, auto-deleted queue (``conveyor.reply.<uuid>``) on
its first send and puts its name in each message's ``reply_to``. The worker's backend publishes
the result document (Celery's rpc format: ``task_id``, ``status``, ``result``, ``traceback``...)
through the default exchange to that queue, with ``correlation_id`` = the task id. One reader
task on the caller's side files every reply under its correlation id, so results can be read in
any order: a reply for a task nobody is waiting on yet is kept until someone asks.

On RabbitMQ (a transport with ``direct_reply_to``) no reply queue is declared: the caller
consumes RabbitMQ's direct reply-to pseudo-queue ``amq.rabbitmq.reply-to`` and workers reply
straight to its connection.

Results live only as long as the caller's connection, and only the App (and event loop) that
sent a task can read its result. Nothing is stored on the broker; ``cleanup`` has nothing to do.

Because replies arrive unasked, a sync ``get`` waits in its own thread (``wait_from_thread``: the
reader releases it when it files the reply), and a send may end at its reply rather than at the
broker's confirm (``watch_replies``, see ``App.asend_task``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Self
from urllib.parse import urlsplit

from conveyor.errors import ConfigurationError, ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.results.base import BackendHost, Block, ResultBackend, StoreRequest, seconds_left
from conveyor.results.meta import ResultMeta, pick_result
from conveyor.results.waiters import FutureWatch, Waiters
from conveyor.routing.entities import Queue
from conveyor.transports.base import Consumer, Transport, Wakeup

__all__ = ["RPCBackend"]

log = logging.getLogger("conveyor.results")

_PER_WORKER = "x-conveyor-per-worker"
_DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
_PLAIN = ""


class RPCBackend(ResultBackend):
    """Replies over the broker to the caller's exclusive reply queue."""

    _awaited = "reply"
    _timeout_hint = " (rpc:// results reach only the App that sent the task)"

    def __init__(self, url: str, host: BackendHost) -> None:
        self.url = url
        self._host = host
        self._reply_to: str | None = None
        self._transport: Transport | None = None
        self._sender: Transport | None = None  # the transport replies went out on
        self._consumer: Consumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._results: dict[str, dict[str, ResultMeta]] = {}
        self._waiters = Waiters()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, host: BackendHost) -> Self:
        parts = urlsplit(url)
        if parts.scheme != "rpc" or parts.netloc or parts.path.strip("/") or parts.query:
            raise ConfigurationError(
                f"the rpc result backend takes no options: use 'rpc://', not {url!r}"
            )
        return cls(url, host)

    async def connect(self) -> None:
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        # The transport that declared the queue: asking the host for one here would open a new
        # connection while the App is closing.
        transport = self._transport
        if self._reply_to not in (None, _DIRECT_REPLY_TO) and transport is not None:
            with contextlib.suppress(Exception):
                await transport.delete_queue(self._reply_to)
        self._consumer = self._reader = self._reply_to = self._transport = None
        self._sender = None
        self._waiters.wake_all()

    async def prepare_reply(self) -> str:
        """The caller's reply queue, declared (exclusive, auto-delete) on first use."""
        if self._reply_to is not None:
            return self._reply_to
        async with self._lock:
            if self._reply_to is None:
                transport = await self._host.atransport()
                if transport.capabilities.direct_reply_to:
                    name = _DIRECT_REPLY_TO
                else:
                    name = f"conveyor.reply.{uuid.uuid4().hex}"
                    await transport.declare_queue(
                        Queue(name, durable=False, exclusive=True, auto_delete=True)
                    )
                self._consumer = await transport.consume([name], no_ack=True)
                self._reader = asyncio.get_running_loop().create_task(self._read(self._consumer))
                self._reply_to = name
                self._transport = transport
        return self._reply_to

    async def _read(self, consumer: Consumer) -> None:
        async for delivery in consumer:
            envelope = delivery.envelope
            try:
                meta = ResultMeta.from_json(envelope.body)
            except ProtocolError as exc:
                log.error("dropping a reply on %s that is not a result: %s", consumer.queues, exc)
                continue
            task_id = envelope.correlation_id or meta.task_id
            key = (meta.worker or "?") if envelope.headers.get(_PER_WORKER) else _PLAIN
            self._results.setdefault(task_id, {})[key] = meta
            self._waiters.wake(task_id)

    @staticmethod
    def _reply(request: StoreRequest) -> Envelope:
        """The reply message for ``request``; ProtocolError for a value JSON cannot hold."""
        return Envelope(
            body=request.meta.to_json(),
            headers={_PER_WORKER: True} if request.per_worker else {},
            correlation_id=request.correlation_id or request.meta.task_id,
            delivery_mode=1,
        )

    async def store(self, request: StoreRequest) -> None:
        """Publish the result to ``request.reply_to``; without one there is nobody to tell."""
        envelope = self._reply(request)
        if not request.reply_to:
            log.debug("task %s has no reply_to: its result is not sent", request.meta.task_id)
            return
        transport = self._sender = await self._host.atransport()
        # Not mandatory: a caller that went away took its reply queue with it.
        await transport.publish(envelope, exchange="", routing_key=request.reply_to)

    @property
    def stores_from_thread(self) -> bool:
        """Once a reply went out over a transport with direct reply-to (RabbitMQ)."""
        sender = self._sender
        return sender is not None and not self._closed and sender.capabilities.direct_reply_to

    def store_from_thread(self, request: StoreRequest) -> bool:
        """Send the reply from this thread when the transport can (RabbitMQ direct reply-to,
        see ``Transport.publish_from_thread``); the first reply always goes through the loop,
        which opens what the later ones use."""
        transport = self._sender
        if transport is None or self._closed or not request.reply_to:
            return False
        try:
            envelope = self._reply(request)
        except ProtocolError:
            return False  # the loop's store reports it
        return transport.publish_from_thread(envelope, routing_key=request.reply_to) is not None

    async def get(self, task_id: str) -> ResultMeta | None:
        return pick_result(self._results.get(task_id, {}))

    def peek(self, task_id: str) -> ResultMeta | None:
        # dict() copies atomically under the GIL while the reader may be adding replies.
        found = dict(self._results.get(task_id) or {})
        meta = pick_result(found)
        if meta is None or not meta.ready:
            return None
        if _PLAIN in found:
            # As in wait(): the AsyncResult keeps the ready state, this backend need not.
            self._results.pop(task_id, None)
        return meta

    def watch_replies(self, task_id: str) -> asyncio.Future[None]:
        return self._waiters.watch(task_id)

    def unwatch_replies(self, task_id: str, watch: asyncio.Future[None]) -> None:
        self._waiters.unwatch(task_id, watch)

    def watch_replies_from_thread(self, task_id: str, wakeup: Wakeup) -> bool:
        self._waiters.watch_thread(task_id, wakeup)
        return True

    def unwatch_replies_from_thread(self, task_id: str, wakeup: Wakeup) -> None:
        self._waiters.unwatch_thread(task_id, wakeup)

    def wait_from_thread(
        self, task_id: str, timeout: float | None, block: Block = Wakeup.wait
    ) -> ResultMeta:
        """Block this (non-loop) thread until the reader files a ready reply for ``task_id``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wakeup = self._waiters.watch_thread(task_id)
            try:
                meta = self.peek(task_id)  # after watching: a reply filed just before is seen
                if meta is not None:
                    return meta
                block(wakeup, self._remaining(task_id, timeout, deadline))
            finally:
                self._waiters.unwatch_thread(task_id, wakeup)

    def _remaining(
        self, task_id: str, timeout: float | None, deadline: float | None
    ) -> float | None:
        """Seconds left to wait for ``task_id``; ResultTimeout when none are (or closed)."""
        remaining = seconds_left(deadline)
        if self._closed or (remaining is not None and remaining <= 0):
            raise self._timeout_error(task_id, timeout)
        return remaining

    async def _read_all(self, task_id: str) -> Mapping[str, ResultMeta]:
        return self._results.get(task_id, {})

    def _watch_results(self, task_id: str) -> FutureWatch:
        return self._waiters.watching(task_id)

    async def wait(self, task_id: str, *, timeout: float | None = None) -> ResultMeta:
        # The base's wait, then the AsyncResult keeps the ready state: no need to hold it here.
        meta = await super().wait(task_id, timeout=timeout)
        if _PLAIN in self._results.get(task_id, {}):
            del self._results[task_id]
        return meta

    async def forget(self, task_id: str) -> None:
        self._results.pop(task_id, None)
