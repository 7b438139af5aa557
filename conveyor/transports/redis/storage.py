"""The Redis storage primitives: the virtual broker's records and messages in Redis.

Each step is one Lua script (:mod:`.lua`), so every producer and worker sees one topology and no
step is half done; the key layout is in :mod:`conveyor.transports.redis`. Commands go through
one :class:`~.connection.RedisConnection` (a pipelined link, a pub/sub hub for wake-ups).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from conveyor.errors import ConfigurationError
from conveyor.routing.entities import Exchange, Queue
from conveyor.routing.topology import BoundBinding, Topology
from conveyor.transports.background import stop_task
from conveyor.transports.base import DeliveryTag, QueueStats
from conveyor.transports.redis.connection import RedisConnection
from conveyor.transports.redis.link import RedisLink
from conveyor.transports.redis.lua import script
from conveyor.transports.redis.pubsub import PubSubHub
from conveyor.transports.redis.records import (
    binding_field,
    binding_from,
    dumps,
    exchange_from,
    exchange_record,
    pack,
    queue_from,
    queue_record,
    redis_tags,
    stored_messages,
)
from conveyor.transports.storage import (
    EventListener,
    Listener,
    NewMessage,
    QueueActivity,
    Reaped,
    StaleTopology,
    Storage,
    StoredMessage,
    TopologySnapshot,
    Writer,
)
from conveyor.urls import redacted

__all__ = ["SCHEMA", "RedisStorage"]

SCHEMA = b"1"
_MAX_BATCH = 1000


class _RedisListener(EventListener):
    """Wake-ups for some queues, fed by the storage's shared pub/sub connection."""

    def __init__(self, hub: PubSubHub, channels: Sequence[bytes]) -> None:
        super().__init__()
        self._hub = hub
        self._channels = channels
        self._subscriptions: list[tuple[bytes, int]] = []

    def _poke(self, _data: bytes | None) -> None:
        self._event.set()

    async def start(self) -> None:
        for channel in self._channels:
            sid = await self._hub.subscribe(channel, self._poke)
            self._subscriptions.append((channel, sid))
        # Subscribing confirmed wakes us; what was published before is the caller's to fetch.
        self._event.clear()

    def _stop_listening(self) -> None:
        for channel, sid in self._subscriptions:
            self._hub.unsubscribe(channel, sid)
        self._subscriptions.clear()


class RedisStorage(Storage):
    """One connection's storage in Redis: a client pool, the scripts and a pub/sub hub."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "conveyor:",
        reconnect_timeout: float = 60.0,
        socket_timeout: float = 10.0,
    ) -> None:
        self._redis = RedisConnection(
            url,
            reconnect_timeout=reconnect_timeout,
            socket_timeout=socket_timeout,
            what="Redis storage",
        )
        self._prefix = key_prefix
        self._prefix_bytes = key_prefix.encode()
        self._ids = itertools.count(1)
        self._id_prefix = ""
        self._requests = itertools.count(1)
        self._renewed: set[str] = set()
        self._publishes: deque[tuple[list[Any], int, asyncio.Future[Any]]] = deque()
        self._publisher: asyncio.Task[None] | None = None
        self._writing = False
        self._due_hints: dict[frozenset[str], float | None] = {}
        self._epoch: bytes | None = None  # of the last topology loaded

    # plumbing

    @property
    def client(self) -> aioredis.Redis:
        return self._redis.client

    @property
    def link(self) -> RedisLink:
        return self._redis.link

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def _script(self, name: str, args: Sequence[Any], doing: str) -> Any:
        return await self._redis.script(script(name), [self._prefix_bytes, *args], doing)

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    async def open(self) -> None:
        if self._redis.is_open:
            return
        schema_key = self._key("schema")

        async def mark(link: RedisLink) -> None:
            await link.execute("SETNX", schema_key, SCHEMA)
            stored = await link.execute("GET", schema_key)
            if stored != SCHEMA:
                raise ConfigurationError(
                    f"Redis at {redacted(self._redis.url)} holds conveyor data of schema "
                    f"{stored!r} under prefix {self._prefix!r}, but this "
                    f"version writes schema {SCHEMA.decode()}: use another prefix or database"
                )

        await self._redis.open(mark, "connecting")
        self._id_prefix = secrets.token_hex(6)

    async def close(self) -> None:
        publisher, self._publisher = self._publisher, None
        await stop_task(publisher)
        while self._publishes:
            self._publishes.popleft()[2].cancel()
        self._writing = False
        await self._redis.close()

    # topology

    async def load_topology(self) -> TopologySnapshot:
        client = self.client

        async def read() -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(self._key("topo", "ver"))
                pipe.hvals(self._key("topo", "ex"))
                pipe.hvals(self._key("topo", "q"))
                pipe.hgetall(self._key("topo", "b"))
                pipe.get(self._key("epoch"))
                return await pipe.execute()

        version, exchanges, queues, bindings, epoch = await self._redis.run(
            read, "loading the topology", timeout=self._redis.socket_timeout
        )
        if epoch is None:
            epoch = await self._new_epoch()
        self._epoch = epoch
        owners: dict[str, str] = {}
        queue_list: list[Queue] = []
        for raw in queues:
            queue, owner = queue_from(orjson.loads(raw))
            queue_list.append(queue)
            if owner is not None:
                owners[queue.name] = owner
        ordered = sorted(bindings.items(), key=lambda item: int(item[1]))
        topology = Topology.build(
            (exchange_from(orjson.loads(raw)) for raw in exchanges),
            queue_list,
            (binding_from(field) for field, _ in ordered),
        )
        return TopologySnapshot(int(version or 0), topology, owners, epoch.decode())

    async def _new_epoch(self) -> bytes:
        """Name this life of the data under the prefix, unless another connection just did
        (a first start, or a Redis that came back empty); mark the prefix as conveyor's."""
        link = self.link
        epoch_key, schema_key = self._key("epoch"), self._key("schema")
        candidate = secrets.token_hex(8)

        async def mark() -> Any:
            await link.execute("SET", schema_key, SCHEMA, "NX")
            await link.execute("SET", epoch_key, candidate, "NX")
            return await link.execute("GET", epoch_key)

        epoch = await self._redis.run(mark, "marking the data's epoch")
        return epoch if isinstance(epoch, bytes) else str(epoch).encode()

    async def topology_version(self) -> int:
        """The version; -1 once the data's epoch is not the one last loaded (after a wipe,
        versions start again and may equal a cached one: the cache must still reload)."""
        link = self.link
        keys = (self._key("topo", "ver"), self._key("epoch"))
        version, epoch = await self._redis.run(
            lambda: link.execute("MGET", *keys), "reading the topology version"
        )
        if self._epoch is not None and epoch != self._epoch:
            return -1
        return int(version or 0)

    async def add_exchange(self, exchange: Exchange) -> Exchange:
        record = dumps(exchange_record(exchange))
        stored = await self._script(
            "add_exchange", [exchange.name, record], f"declaring exchange {exchange.name!r}"
        )
        return exchange_from(orjson.loads(stored))

    async def remove_exchange(self, name: str) -> None:
        await self._script("remove_exchange", [name], f"deleting exchange {name!r}")

    async def add_queue(
        self, queue: Queue, *, owner: str | None = None
    ) -> tuple[Queue, str | None]:
        maxlen = queue.arguments.get("x-max-length")
        stored = await self._script(
            "add_queue",
            [
                queue.name,
                dumps(queue_record(queue, owner)),
                "" if maxlen is None else int(maxlen),
                repr(time.time()),
            ],
            f"declaring queue {queue.name!r}",
        )
        return queue_from(orjson.loads(stored))

    async def remove_queue(self, name: str) -> int:
        return int(await self._script("remove_queue", [name], f"deleting queue {name!r}"))

    async def add_binding(self, bound: BoundBinding) -> None:
        await self._script("add_binding", [binding_field(bound)], f"binding queue {bound.queue!r}")

    async def remove_binding(self, bound: BoundBinding) -> None:
        await self._script(
            "remove_binding", [binding_field(bound)], f"unbinding queue {bound.queue!r}"
        )

    # messages

    async def enqueue(
        self, messages: Sequence[NewMessage], writer: Writer, *, settle: Sequence[DeliveryTag] = ()
    ) -> list[StoredMessage]:
        """See :meth:`Storage.enqueue`. Concurrent calls share one script call (group commit);
        each keeps its own topology check, settlement and overflow."""
        settled = redis_tags(settle)
        group: list[Any] = [writer.topology_version, writer.connection, len(settled), *settled]
        group.append(len(messages))
        group.extend(pack(m, self._new_id()) for m in messages)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._publishes.append((group, len(messages), done))
        if not self._writing:
            # No write in flight: this call writes, taking along whatever queued with it.
            self._writing = True
            try:
                await self._write_batch()
            except BaseException:
                done.cancel()
                raise
            finally:
                if self._publishes:
                    self._publisher = asyncio.create_task(self._write_rest())
                else:
                    self._writing = False
        reply = await done
        if reply == -1:
            raise StaleTopology(f"topology changed since version {writer.topology_version}")
        return stored_messages(reply)

    async def _write_rest(self) -> None:
        """Write the enqueues that queued while the last write was in flight, batch by batch."""
        try:
            while self._publishes:
                await self._write_batch()
        finally:
            self._writing = False
            self._publisher = None

    async def _write_batch(self) -> None:
        """Write the oldest pending enqueues in one script call and settle their futures.

        If the writer is cancelled, the other calls of its batch go back to the head of the
        queue: sent again, a group already stored is recognized and not stored twice.
        """
        batch: list[tuple[list[Any], int, asyncio.Future[Any]]] = []
        size = 0
        while self._publishes and size < _MAX_BATCH:
            item = self._publishes.popleft()
            if item[2].done():
                continue
            batch.append(item)
            size += item[1]
        if not batch:
            return
        argv: list[Any] = [repr(time.time()), len(batch)]
        for group, _, _ in batch:
            argv.extend(group)
        try:
            replies = await self._script("enqueue", argv, "publishing")
        except Exception as exc:
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        except BaseException:
            self._publishes.extendleft(reversed([i for i in batch if not i[2].done()]))
            raise
        for (_, _, done), reply in zip(batch, replies, strict=True):
            if not done.done():
                done.set_result(reply)

    async def dequeue(
        self, queues: Sequence[str], *, connection: str, limit: int, ack: Sequence[DeliveryTag] = ()
    ) -> list[StoredMessage]:
        acks = redis_tags(ack)
        args: list[Any] = [
            connection,
            min(limit, _MAX_BATCH),
            repr(time.time()),
            next(self._requests),
            len(acks),
            *acks,
            *queues,
        ]
        messages, due = await self._script("dequeue", args, "fetching messages")
        # The next look at these queues' due times is free: listeners are woken by any new
        # delayed message, so a consumer never sleeps past one published after this answer.
        if len(self._due_hints) > 1000:
            self._due_hints.clear()
        self._due_hints[frozenset(queues)] = None if due is None else float(due)
        return stored_messages(messages)

    async def claim_expired(self, *, connection: str, limit: int) -> list[StoredMessage]:
        reply = await self._script(
            "claim_expired",
            [connection, min(limit, _MAX_BATCH), repr(time.time())],
            "expiring messages",
        )
        return stored_messages(reply)

    async def ack(self, tags: Sequence[DeliveryTag], *, connection: str) -> int:
        valid = redis_tags(tags)
        if not valid:
            return 0
        return int(await self._script("ack", [connection, *valid], "acking"))

    async def release(self, tags: Sequence[DeliveryTag], *, connection: str) -> int:
        valid = redis_tags(tags)
        if not valid:
            return 0
        return int(await self._script("release", [connection, *valid], "requeueing"))

    async def next_due(self, queues: Sequence[str]) -> float | None:
        if not queues:
            return None
        key = frozenset(queues)
        if key in self._due_hints:
            return self._due_hints.pop(key)
        reply = await self._script(
            "next_due", [repr(time.time()), *queues], "reading delayed messages"
        )
        return None if reply is None else float(reply)

    async def next_expiry(self) -> float | None:
        link = self.link
        key = self._key("exp")
        first = await self._redis.run(
            lambda: link.execute("ZRANGE", key, 0, 0, "WITHSCORES"), "reading message expiry"
        )
        if not first:
            return None
        head = first[0]  # RESP3 pairs each member with its score; RESP2 flattens them
        return float(head[1] if isinstance(head, list) else first[1])

    async def purge(self, queue: str) -> int:
        return int(await self._script("purge", [queue], f"purging queue {queue!r}"))

    async def stats(self, queue: str) -> QueueStats:
        ready, unacked, consumers = await self._script(
            "stats", [queue, repr(time.time())], f"reading stats of queue {queue!r}"
        )
        return QueueStats(queue, int(ready), int(unacked), int(consumers))

    # connections and consumers

    async def renew(self, connection: str, *, lease: float) -> bool:
        known = await self._script(
            "renew", [connection, repr(time.time() + lease)], "renewing the connection lease"
        )
        first = connection not in self._renewed
        self._renewed.add(connection)
        return bool(known) or first

    async def disconnect(self, connection: str) -> list[str]:
        idle = await self._script("disconnect", [connection, repr(time.time())], "disconnecting")
        self._renewed.discard(connection)
        return [q.decode() for q in idle]

    async def reap(self) -> Reaped:
        dead, idle = await self._script("reap", [repr(time.time())], "reaping dead connections")
        return Reaped(
            tuple(c.decode() for c in dead), tuple(dict.fromkeys(q.decode() for q in idle))
        )

    async def add_consumer(self, connection: str, tag: str, queues: Sequence[str]) -> None:
        await self._script(
            "add_consumer",
            [connection, tag, repr(time.time()), *queues],
            f"registering consumer {tag!r}",
        )

    async def remove_consumer(self, connection: str, tag: str) -> list[str]:
        idle = await self._script(
            "remove_consumer",
            [connection, tag, repr(time.time())],
            f"removing consumer {tag!r}",
        )
        return [q.decode() for q in idle]

    async def activity(self, queues: Sequence[str]) -> dict[str, QueueActivity]:
        if not queues:
            return {}
        reply = await self._script(
            "activity", [repr(time.time()), *queues], "reading queue activity"
        )
        return {
            reply[i].decode(): QueueActivity(float(reply[i + 1]), int(reply[i + 2]))
            for i in range(0, len(reply), 3)
        }

    async def listen(self, queues: Sequence[str]) -> Listener:
        listener = _RedisListener(self._redis.hub, [self._key("w", q).encode() for q in queues])
        await listener.start()
        return listener
