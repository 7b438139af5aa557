"""``redis://host:6379/0``: results in Redis, kept for ``result_expires`` seconds.

The layout is Celery's, so a Celery client reads conveyor's results and the other way round: the
plain result of a task is the JSON document at ``celery-task-meta-<task id>``, and every store is
also PUBLISHed on a channel of that same name. Broadcast results (one per worker) live in the hash
``celery-task-meta-<task id>:workers``, by worker hostname, and are published on the same channel.
The zset ``conveyor-results-done`` orders task ids by ``date_done`` for :meth:`cleanup`.

A waiting caller subscribes to its task's channel (one shared subscriber connection per backend),
then reads the stored state, then sleeps until Redis publishes: nothing polls, and any number of
callers can wait for the same result. Tasks sent with this backend carry its reply channel, on
which conveyor workers announce their results too: a sync ``get`` first waits up to
``_REPLY_GRACE`` seconds in its own thread for that announcement (no trip through the event loop,
no subscription), then waits as above, which also finds results that no one announces (a Celery
worker's). Options (URL query): ``key_prefix`` (prepended to every key and channel, default
none), ``reconnect_timeout`` (default 60) and ``socket_timeout`` (default 10); other query
parameters go to redis-py. The client, its pipelined link and the subscriber connection are one
:class:`~conveyor.transports.redis.connection.RedisConnection`, as for the Redis broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, fields
from importlib.resources import files
from typing import Any, Self, TypeVar

import orjson
import redis.asyncio as aioredis
from redis import exceptions as rexc

from conveyor.errors import BrokerUnavailable, ConveyorError, ProtocolError
from conveyor.results.base import (
    BackendHost,
    BatchingBackend,
    Block,
    ChordJoin,
    ChordPart,
    StoreRequest,
    Watch,
)
from conveyor.results.meta import ResultMeta, pick_result
from conveyor.results.waiters import Waiters
from conveyor.transports.base import Wakeup
from conveyor.transports.redis.client import split_url
from conveyor.transports.redis.connection import RedisConnection
from conveyor.transports.redis.pubsub import PubSubHub
from conveyor.urls import parse_options, redacted

__all__ = ["RedisBackend", "RedisResultOptions"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RedisResultOptions:
    """The ``redis://`` result backend's own URL options (``?key_prefix=...``): a prefix for
    its keys, how long a call waits for Redis to come back, and each socket call's timeout."""

    key_prefix: str = ""
    reconnect_timeout: float = 60.0
    socket_timeout: float = 10.0


# Each option's type is its default's.
_OPTIONS: dict[str, tuple[type, Any]] = {
    f.name: (type(f.default), f.default) for f in fields(RedisResultOptions)
}


_PLAIN = ""
_KEPT_REPLIES = 10_000  # results heard on the reply channel before anyone asked for them
_REPLY_GRACE = 0.005  # how long a sync get waits for an announcement before subscribing

# the scripts that store and read results, each one step in Redis (ARGV described in each)
_SCRIPTS = files("conveyor.results") / "lua"
_STORE = (_SCRIPTS / "redis_store.lua").read_text(encoding="utf-8")
_READ = (_SCRIPTS / "redis_read.lua").read_text(encoding="utf-8")
_CHORD_PART = (_SCRIPTS / "redis_chord_part.lua").read_text(encoding="utf-8")
_CHORD_DONE = (_SCRIPTS / "redis_chord_done.lua").read_text(encoding="utf-8")
_CHORD_BODY_RUN = (_SCRIPTS / "redis_chord_body_run.lua").read_text(encoding="utf-8")
_CHORD_EXPIRES = 86400  # seconds a chord's join lasts when result_expires is not set
_CHORD_DONE_MARK = 300  # seconds a finished chord ignores late parts


class _Signal(enum.Enum):
    """What a waiter's inbox holds besides published result documents."""

    RECHECK = "recheck"  # the subscription was (re)made: read the stored state again
    EXPIRED = "expired"
    CLOSED = "closed"


def _found(plain: bytes | None, workers: Any) -> dict[str, ResultMeta]:
    """Results by worker (``""`` for the plain one) from GET and HGETALL replies."""
    pairs = (
        workers.items()
        if isinstance(workers, dict)
        else zip(workers[::2], workers[1::2], strict=True)
    )
    found = {bytes(w).decode(): ResultMeta.from_json(doc) for w, doc in pairs}
    if plain is not None:
        found[_PLAIN] = ResultMeta.from_json(plain)
    return found


class _InboxWatch:
    """A ``Watch`` over a subscription's inbox: any document or re-check wakes it."""

    __slots__ = ("_inbox",)

    def __init__(self, inbox: asyncio.Queue[bytes | _Signal]) -> None:
        self._inbox = inbox

    async def changed(self, timeout: float | None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                return await self._inbox.get() is not _Signal.CLOSED
        except TimeoutError:
            return False


class RedisBackend(BatchingBackend):
    """Results in Redis with expiry; waiters are woken by Redis pub/sub. Chords join in
    Celery's keys with Celery's rules, so Celery and conveyor workers finish each other's."""

    joins_chords = True

    def __init__(
        self, url: str, client_url: str, *, host: BackendHost, options: RedisResultOptions
    ) -> None:
        self.url = url
        self._host = host
        self._prefix = options.key_prefix
        self._connection = RedisConnection(
            client_url,
            reconnect_timeout=options.reconnect_timeout,
            socket_timeout=options.socket_timeout,
            what="Redis result backend",
        )
        self._inboxes: set[asyncio.Queue[bytes | _Signal]] = set()
        self._reply_channel: str | None = None
        self._reply_waiters: dict[str, list[asyncio.Future[ResultMeta]]] = {}
        self._replies: OrderedDict[str, ResultMeta] = OrderedDict()
        self._threads = Waiters()  # sync callers in wait_from_thread (thread waiters only)
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, host: BackendHost) -> Self:
        own_url, client_url = split_url(url, _OPTIONS)
        values = parse_options(own_url, {}, _OPTIONS, what="result backend URL")
        return cls(url, client_url, host=host, options=RedisResultOptions(**values))

    # plumbing

    def _key(self, task_id: str) -> str:
        return f"{self._prefix}celery-task-meta-{task_id}"

    def _workers_key(self, task_id: str) -> str:
        return f"{self._key(task_id)}:workers"

    @property
    def _done_key(self) -> str:
        return f"{self._prefix}conveyor-results-done"

    @property
    def _redis(self) -> aioredis.Redis:
        """The redis-py client; BrokerUnavailable unless connected."""
        return self._connection.client

    @property
    def _client(self) -> aioredis.Redis | None:
        """The redis-py client, or None unless connected."""
        return self._connection.client if self._connection.is_open else None

    @property
    def _hub(self) -> PubSubHub | None:
        """The shared subscriber connection, or None unless connected."""
        return self._connection.hub if self._connection.is_open else None

    async def connect(self) -> None:
        if self._connection.is_open:
            return
        if self._closed:
            raise BrokerUnavailable(f"Redis result backend {redacted(self.url)} is closed")
        await self._connection.open(
            lambda link: link.execute("PING"), "connecting the result backend"
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._threads.wake_all()
        for inbox in self._inboxes:
            inbox.put_nowait(_Signal.CLOSED)
        await self._connection.close()

    # storing

    def _expiry_ms(self) -> int | None:
        expires = self._host.conf.result_expires
        if expires is None or expires <= 0:
            return None
        return max(1, round(expires * 1000))

    async def store_many(self, requests: Sequence[StoreRequest]) -> None:
        if not requests:
            return
        args: list[Any] = [repr(time.time()), self._expiry_ms() or "", self._done_key, 0]
        now = time.time()
        for request in requests:
            meta = request.meta
            field = (meta.worker or "?") if request.per_worker else ""
            doc = meta.to_json()
            reply = request.reply_to or ""
            if not reply.startswith(self._reply_prefix):
                reply = ""
            args.extend(
                (self._key(meta.task_id), field, meta.task_id, meta.date_done or now, doc, reply)
            )
        args[3] = len(requests)
        await self._connection.script(_STORE, args, "storing results")

    # reading

    async def _read(self, task_id: str) -> dict[str, ResultMeta]:
        plain, workers = await self._connection.script(
            _READ, [self._key(task_id)], f"reading the result of task {task_id}"
        )
        return _found(plain, workers)

    async def get(self, task_id: str) -> ResultMeta | None:
        return pick_result(await self._read(task_id))

    @contextlib.asynccontextmanager
    async def _subscribed(
        self, task_id: str
    ) -> AsyncIterator[tuple[asyncio.Queue[bytes | _Signal], dict[str, ResultMeta]]]:
        """An inbox of what Redis publishes about ``task_id`` and what was stored when it
        started: nothing stored in between is missed."""
        hub = self._hub
        if hub is None or self._client is None:
            self._redis  # noqa: B018 - raises the right BrokerUnavailable
            raise AssertionError("unreachable")
        inbox: asyncio.Queue[bytes | _Signal] = asyncio.Queue()

        def deliver(data: bytes | None) -> None:
            inbox.put_nowait(_Signal.RECHECK if data is None else data)

        key = self._key(task_id)
        channel = key.encode()
        try:
            sid, (plain, workers) = await hub.subscribe_then(
                channel, deliver, ("GET", key), ("HGETALL", self._workers_key(task_id))
            )
            found = _found(plain, workers)
        except rexc.ConnectionError:
            sid = await hub.subscribe(channel, deliver)
            try:
                found = await self._read(task_id)
            except BaseException:
                hub.unsubscribe(channel, sid)
                raise
        # The subscription's own confirmation asks for a re-read: the read above already did it.
        # Documents published meanwhile stay.
        early = [inbox.get_nowait() for _ in range(inbox.qsize())]
        for item in early:
            if item is not _Signal.RECHECK:
                inbox.put_nowait(item)
        self._inboxes.add(inbox)
        try:
            yield inbox, found
        finally:
            self._inboxes.discard(inbox)
            hub.unsubscribe(channel, sid)

    @staticmethod
    async def _next(
        inbox: asyncio.Queue[bytes | _Signal], deadline: float | None
    ) -> bytes | _Signal:
        try:
            async with asyncio.timeout_at(deadline):
                return await inbox.get()
        except TimeoutError:
            return _Signal.EXPIRED

    @property
    def _reply_prefix(self) -> str:
        return f"{self._prefix}conveyor-reply-"

    async def prepare_reply(self) -> str:
        """This backend's reply channel, for the task message's ``reply_to``.

        Workers with a Redis backend of the same prefix publish the result there as well, so a
        caller that sent the task hears of its result without first subscribing to it.
        """
        hub = self._connection.hub
        if self._reply_channel is None:
            channel = f"{self._reply_prefix}{uuid.uuid4().hex}"
            await hub.subscribe(channel.encode(), self._replied)
            self._reply_channel = channel
        return self._reply_channel

    def _replied(self, doc: bytes | None) -> None:
        if doc is None:
            return
        try:
            meta = ResultMeta.from_json(doc)
        except ProtocolError:
            return
        waiters = self._reply_waiters.get(meta.task_id)
        if waiters:
            for fut in waiters:
                if not fut.done() and meta.ready:
                    fut.set_result(meta)
            if not self._threads:
                return
        if meta.ready:
            self._replies[meta.task_id] = meta
            while len(self._replies) > _KEPT_REPLIES:
                self._replies.popitem(last=False)
            self._threads.wake(meta.task_id)

    def peek(self, task_id: str) -> ResultMeta | None:
        """A ready result already heard on this backend's reply channel (no I/O, any thread)."""
        return self._replies.get(task_id)

    def wait_from_thread(
        self, task_id: str, timeout: float | None, block: Block = Wakeup.wait
    ) -> ResultMeta | None:
        """Wait in this thread, up to ``_REPLY_GRACE`` seconds, for the result to be announced
        on the reply channel; None after that (the caller then waits through the loop)."""
        if self._reply_channel is None or self._closed:
            return self.peek(task_id)
        grace = _REPLY_GRACE if timeout is None else max(0.0, min(_REPLY_GRACE, timeout))
        wakeup = self._threads.watch_thread(task_id)
        try:
            meta = self.peek(task_id)  # after watching: one announced just before is seen
            if meta is None and block(wakeup, grace):
                meta = self.peek(task_id)
        finally:
            self._threads.unwatch_thread(task_id, wakeup)
        if meta is not None:
            self._replies.pop(task_id, None)  # the AsyncResult keeps it, as after wait()
        return meta

    # Not the base's wait: it races the reply channel against the subscription, and a published
    # document is the result itself, so a wake-up costs no read (the base reads per wake-up).
    async def wait(self, task_id: str, *, timeout: float | None = None) -> ResultMeta:
        kept = self._replies.pop(task_id, None)
        if kept is not None:
            return kept
        if self._reply_channel is None:
            return await self._wait_subscribed(task_id, timeout)
        # A task sent with this backend's reply channel announces its result there; the
        # subscription to the task's own channel covers every other case. First one wins.
        replied: asyncio.Future[ResultMeta] = asyncio.get_running_loop().create_future()
        self._reply_waiters.setdefault(task_id, []).append(replied)
        subscribed = asyncio.ensure_future(self._wait_subscribed(task_id, timeout))
        try:
            await asyncio.wait({replied, subscribed}, return_when=asyncio.FIRST_COMPLETED)
            if replied.done():
                return replied.result()
            return subscribed.result()
        finally:
            waiters = self._reply_waiters.get(task_id, [])
            if replied in waiters:
                waiters.remove(replied)
            if not waiters:
                self._reply_waiters.pop(task_id, None)
            if not subscribed.done():
                subscribed.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConveyorError):
                    await subscribed
            elif not subscribed.cancelled():
                subscribed.exception()  # retrieved: the reply channel answered first

    async def _wait_subscribed(self, task_id: str, timeout: float | None) -> ResultMeta:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        async with self._subscribed(task_id) as (inbox, found):
            meta = pick_result(found)
            while meta is None or not meta.ready:
                item = await self._next(inbox, deadline)
                if item is _Signal.EXPIRED or item is _Signal.CLOSED:
                    raise self._timeout_error(task_id, timeout)
                if item is _Signal.RECHECK:
                    meta = pick_result(await self._read(task_id))
                else:
                    assert isinstance(item, bytes)
                    meta = ResultMeta.from_json(item)
            return meta

    async def _read_all(self, task_id: str) -> Mapping[str, ResultMeta]:
        return await self._read(task_id)

    @contextlib.asynccontextmanager
    async def _watch_results(self, task_id: str) -> AsyncIterator[Watch]:
        # collect() reads again after subscribing: one round trip more than the subscription's
        # own read, on the rare broadcast path, for waiting written once.
        async with self._subscribed(task_id) as (inbox, _):
            yield _InboxWatch(inbox)

    async def forget(self, task_id: str) -> None:
        client = self._redis

        async def delete() -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(task_id), self._workers_key(task_id))
                pipe.zrem(self._done_key, task_id)
                await pipe.execute()

        await self._connection.run(
            delete, f"forgetting task {task_id}", timeout=self._connection.socket_timeout
        )

    async def cleanup(self, *, older_than: float) -> int:
        client = self._redis
        removed = 0
        while True:
            ids: list[Any] = await self._connection.run(
                lambda: client.zrangebyscore(
                    self._done_key, "-inf", f"({older_than!r}", start=0, num=500
                ),
                "listing old results",
                timeout=self._connection.socket_timeout,
            )
            if not ids:
                return removed
            names = [bytes(i).decode() for i in ids]

            async def delete(names: list[str] = names) -> list[Any]:
                async with client.pipeline(transaction=True) as pipe:
                    for name in names:
                        pipe.delete(self._key(name), self._workers_key(name))
                    pipe.zrem(self._done_key, *names)
                    return await pipe.execute()

            replies = await self._connection.run(
                delete, "removing old results", timeout=self._connection.socket_timeout
            )
            removed += sum(1 for n in replies[:-1] if n)

    # chords

    def _chord_keys(self, group_id: str) -> dict[str, str]:
        base = f"{self._prefix}celery-taskset-meta-{group_id}"
        return {k: f"{base}.{k}" for k in "jtsdc"}

    def _chord_expires(self) -> int:
        expires = self._host.conf.result_expires
        return max(1, int(expires)) if expires else _CHORD_EXPIRES

    async def chord_start(self, group_id: str, size: int) -> None:
        keys = self._chord_keys(group_id)
        client = self._redis

        async def start() -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(keys["c"])
                pipe.set(keys["s"], size, ex=self._chord_expires())
                await pipe.execute()

        await self._connection.run(
            start, f"starting chord {group_id}", timeout=self._connection.socket_timeout
        )

    async def _join_part(self, part: ChordPart, claim_seconds: float) -> ChordJoin | None:
        keys = self._chord_keys(part.group_id)
        try:
            encoded = orjson.dumps([1, part.task_id, str(part.state), part.result])
        except TypeError as exc:
            raise ProtocolError(
                f"chord part {part.task_id} cannot be stored as JSON: {exc}"
            ) from exc
        token = uuid.uuid4().hex
        score = "+inf" if part.group_index is None else str(part.group_index)
        args: list[Any] = [keys[k] for k in "jtsdc"] + [part.task_id, encoded, score]
        args += [self._chord_expires(), max(1, math.ceil(claim_seconds)), token]
        reply = await self._connection.script(_CHORD_PART, args, f"joining chord {part.group_id}")
        if not reply or int(reply[0]) != 1:
            return None
        parts = []
        for place, raw in enumerate(reply[1]):
            _, task_id, state, result = orjson.loads(raw)
            parts.append(ChordPart(part.group_id, str(task_id), place, str(state), result))
        return ChordJoin(part.group_id, token, tuple(parts))

    async def chord_done(self, group_id: str, claim: str) -> bool:
        keys = self._chord_keys(group_id)
        args: list[Any] = [keys[k] for k in "cjtsd"] + [claim, _CHORD_DONE_MARK]
        done = await self._connection.script(_CHORD_DONE, args, f"finishing chord {group_id}")
        return bool(done)

    async def chord_body_run(self, group_id: str, send: str) -> bool:
        key = f"{self._prefix}celery-taskset-meta-{group_id}.b"
        args: list[Any] = [key, send, self._chord_expires()]
        first = await self._connection.script(_CHORD_BODY_RUN, args, f"running chord {group_id}")
        return bool(first)
