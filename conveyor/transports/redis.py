"""``redis://host:6379/0`` (and ``rediss://``): the virtual broker with its storage in Redis.

AMQP's semantics come from :class:`~conveyor.transports.virtual.VirtualTransport`; this module
only keeps records and messages in Redis and moves them, each step one Lua script (see
:mod:`.redis_scripts`), so every producer and worker sees one topology and no step is half done.

Keys, under a prefix (``conveyor:`` unless the ``key_prefix`` option says otherwise)::

    topo:ver  topology version        topo:ex / topo:q / topo:b   exchanges, queues, bindings
    topo:maxlen  x-max-length by queue     used  last use of each queue (for x-expires)
    seq  message sequence     exp  ready messages with a TTL, by expiry (zset of tags)
    conns  live connections by lease deadline (zset)
    q:<queue>:r  ready messages by score     q:<queue>:d  delayed ones by due time
    q:<queue>:dp  priority of delayed ones    q:<queue>:m  message bodies by id
    q:<queue>:n  delivery counts of messages given back     q:<queue>:l  leases by id
    q:<queue>:c  consumers (``connection\\ntag``)
    cl:<connection>  tags leased to it    cc:<connection>  its consumers
    ch:<connection>  its last dequeue, replayed if the reply was lost

A publish writes every copy in one script that first checks the topology version; concurrent
publishes share one script call. A consumed message is leased, not removed: it moves from the
ready set to the lease hash, and the connection's lease deadline (renewed by the transport's
housekeeper) decides when a dead worker's messages go back, with their delivery count kept.
Ready scores keep priorities exact for 2**45 (35 trillion) messages per prefix (beyond, levels
would blur). Consumers block on pub/sub wake-ups (``w:<queue>`` channels, one shared subscriber
connection per transport), sent when a queue goes from nothing ready to something ready or gets
a delayed message; messages themselves never travel over pub/sub. Commands go through one
pipelined connection (:class:`~.redis_support.RedisLink`), and every call retries through a lost
connection with backoff for up to ``reconnect_timeout`` seconds; a publish or fetch whose reply
was lost is recognized when sent again, not applied twice. ``schema`` marks the prefix as
conveyor's, so foreign or newer data is refused untouched.

Options (URL query or ``broker_transport_options``): ``key_prefix``, ``lease`` (seconds a dead
worker's messages stay leased, default 30), ``poll_interval`` (default 1), ``reconnect_timeout``
(default 60), ``socket_timeout`` (default 10). Other URL query parameters go to redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Self, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
import redis.asyncio as aioredis

from conveyor.errors import BrokerUnavailable, ConfigurationError, ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Binding, Exchange, FrozenMapping, Queue
from conveyor.routing.topology import BoundBinding, Topology
from conveyor.transports import redis_scripts as lua
from conveyor.transports.base import Capabilities, DeliveryTag, QueueStats
from conveyor.transports.redis_support import (
    PubSubHub,
    RedisLink,
    check_url,
    make_client,
    run,
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
)
from conveyor.transports.virtual import VirtualTransport, virtual_capabilities
from conveyor.urls import parse_options, redacted

__all__ = ["RedisStorage", "RedisTransport"]

T = TypeVar("T")

SCHEMA = b"1"
_META_SIZE = struct.Struct("!I")
_MAX_BATCH = 1000


def _plain(value: Any) -> Any:
    if isinstance(value, FrozenMapping):
        return value.to_dict()
    raise TypeError(f"cannot store {type(value).__name__}")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_plain, option=orjson.OPT_SORT_KEYS)


def _exchange_record(exchange: Exchange) -> dict[str, Any]:
    return {
        "name": exchange.name,
        "type": exchange.type.value,
        "durable": exchange.durable,
        "auto_delete": exchange.auto_delete,
        "arguments": exchange.arguments,
    }


def _exchange_from(record: Mapping[str, Any]) -> Exchange:
    return Exchange(
        record["name"],
        record["type"],
        durable=record["durable"],
        auto_delete=record["auto_delete"],
        arguments=record["arguments"],
    )


def _binding_target(exchange: Exchange | str | None) -> Any:
    return _exchange_record(exchange) if isinstance(exchange, Exchange) else exchange


def _binding_exchange(value: Any) -> Exchange | str | None:
    return _exchange_from(value) if isinstance(value, dict) else value


def _queue_record(queue: Queue, owner: str | None) -> dict[str, Any]:
    return {
        "name": queue.name,
        "exchange": _binding_target(queue.exchange),
        "routing_key": queue.routing_key,
        "bindings": [
            {
                "exchange": _binding_target(b.exchange),
                "routing_key": b.routing_key,
                "arguments": b.arguments,
            }
            for b in queue.bindings
        ],
        "arguments": queue.arguments,
        "durable": queue.durable,
        "exclusive": queue.exclusive,
        "auto_delete": queue.auto_delete,
        "owner": owner,
    }


def _queue_from(record: Mapping[str, Any]) -> tuple[Queue, str | None]:
    queue = Queue(
        record["name"],
        exchange=_binding_exchange(record["exchange"]),
        routing_key=record["routing_key"],
        bindings=tuple(
            Binding(_binding_exchange(b["exchange"]) or "", b["routing_key"], b["arguments"])
            for b in record["bindings"]
        ),
        queue_arguments=record["arguments"],
        durable=record["durable"],
        exclusive=record["exclusive"],
        auto_delete=record["auto_delete"],
    )
    return queue, record["owner"]


def _binding_field(bound: BoundBinding) -> bytes:
    return _dumps([bound.exchange, bound.queue, bound.routing_key, bound.arguments])


def _binding_from(field: bytes) -> BoundBinding:
    exchange, queue, routing_key, arguments = orjson.loads(field)
    return BoundBinding(exchange, queue, routing_key, arguments)


def _pack(message: NewMessage, ident: str) -> bytes:
    """One message as the ENQUEUE script takes it and the body hash keeps it: a header
    (``id, priority, not_before, expires_at, queue length`` and the queue, newline separated),
    the routing fields as JSON, then the envelope."""
    queue = message.queue.encode()
    head = b"%s\n%d\n%s\n%s\n%d\n" % (
        ident.encode(),
        message.priority,
        b"" if message.not_before is None else repr(message.not_before).encode(),
        b"" if message.expires_at is None else repr(message.expires_at).encode(),
        len(queue),
    )
    meta = orjson.dumps(
        [message.exchange, message.routing_key, message.priority, message.expires_at]
    )
    return b"".join((head, queue, _META_SIZE.pack(len(meta)), meta, message.envelope.to_bytes()))


def _unpack(queue: bytes, ident: bytes, count: Any, blob: bytes | None) -> StoredMessage:
    name = queue.decode()
    tag = f"{ident.decode()}:{name}"
    if blob is None:
        raise ProtocolError(f"message {tag} lost its body in Redis; was the key evicted?")
    try:
        pos = 0
        for _ in range(4):
            pos = blob.index(b"\n", pos) + 1
        end = blob.index(b"\n", pos)
        start = end + 1 + int(blob[pos:end])
        (size,) = _META_SIZE.unpack_from(blob, start)
        start += _META_SIZE.size
        exchange, routing_key, priority, expires_at = orjson.loads(blob[start : start + size])
    except (struct.error, orjson.JSONDecodeError, ValueError) as exc:
        raise ProtocolError(f"message {tag} in Redis is not conveyor's: {exc}") from exc
    return StoredMessage(
        tag=tag,
        queue=name,
        envelope=Envelope.from_bytes(blob[start + size :]),
        exchange=exchange,
        routing_key=routing_key,
        priority=priority,
        delivery_count=int(count),
        expires_at=expires_at,
    )


def _messages(reply: Sequence[Any]) -> list[StoredMessage]:
    return [_unpack(*reply[i : i + 4]) for i in range(0, len(reply), 4)]


def _tags(tags: Sequence[DeliveryTag]) -> list[str]:
    return [t for t in tags if isinstance(t, str) and ":" in t]


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
        self._url = url
        self._prefix = key_prefix
        self._prefix_bytes = key_prefix.encode()
        self._patience = reconnect_timeout
        self._socket_timeout = socket_timeout
        self._client: aioredis.Redis | None = None
        self._hub: PubSubHub | None = None
        self._link: RedisLink | None = None
        self._ids = itertools.count(1)
        self._id_prefix = ""
        self._requests = itertools.count(1)
        self._renewed: set[str] = set()
        self._publishes: deque[tuple[list[Any], int, asyncio.Future[Any]]] = deque()
        self._publisher: asyncio.Task[None] | None = None
        self._writing = False
        self._due_hints: dict[frozenset[str], float | None] = {}

    # plumbing

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise BrokerUnavailable(f"Redis storage for {redacted(self._url)} is not open")
        return self._client

    @property
    def link(self) -> RedisLink:
        if self._link is None:
            raise BrokerUnavailable(f"Redis storage for {redacted(self._url)} is not open")
        return self._link

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def _run(
        self, call: Callable[[], Awaitable[T]], doing: str, *, timeout: float | None = None
    ) -> T:
        """Run ``call`` through :func:`run`; ``timeout`` only for calls the link does not bound."""
        return await run(
            call,
            url=self._url,
            doing=doing,
            patience=self._patience,
            timeout=timeout,
        )

    async def _script(self, name: str, args: Sequence[Any], doing: str) -> Any:
        source: str = getattr(lua, name)
        argv = [self._prefix_bytes, *args]
        link = self.link
        return await self._run(lambda: link.run_script(source, argv), doing)

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    async def open(self) -> None:
        if self._client is not None:
            return
        client = make_client(self._url)
        link = RedisLink(client, timeout=self._socket_timeout)
        schema_key = self._key("schema")

        async def mark() -> Any:
            await link.execute("SETNX", schema_key, SCHEMA)
            return await link.execute("GET", schema_key)

        try:
            stored = await run(
                mark,
                url=self._url,
                doing="connecting",
                patience=0,
                timeout=self._socket_timeout + 1,
            )
            if stored != SCHEMA:
                raise ConfigurationError(
                    f"Redis at {redacted(self._url)} holds conveyor data of schema "
                    f"{stored!r} under prefix {self._prefix!r}, but this "
                    f"version writes schema {SCHEMA.decode()}: use another prefix or database"
                )
        except BaseException:
            await link.close()
            await client.aclose()
            raise
        self._id_prefix = secrets.token_hex(6)
        self._client = client
        self._link = link
        self._hub = PubSubHub(client, url=self._url)

    async def close(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
        while self._publishes:
            self._publishes.popleft()[2].cancel()
        self._writing = False
        client, self._client = self._client, None
        hub, self._hub = self._hub, None
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        if hub is not None:
            await hub.close()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    # topology

    async def load_topology(self) -> TopologySnapshot:
        client = self.client

        async def read() -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(self._key("topo", "ver"))
                pipe.hvals(self._key("topo", "ex"))
                pipe.hvals(self._key("topo", "q"))
                pipe.hgetall(self._key("topo", "b"))
                return await pipe.execute()

        version, exchanges, queues, bindings = await self._run(
            read, "loading the topology", timeout=self._socket_timeout
        )
        owners: dict[str, str] = {}
        queue_list: list[Queue] = []
        for raw in queues:
            queue, owner = _queue_from(orjson.loads(raw))
            queue_list.append(queue)
            if owner is not None:
                owners[queue.name] = owner
        ordered = sorted(bindings.items(), key=lambda item: int(item[1]))
        topology = Topology.build(
            (_exchange_from(orjson.loads(raw)) for raw in exchanges),
            queue_list,
            (_binding_from(field) for field, _ in ordered),
        )
        return TopologySnapshot(int(version or 0), topology, owners)

    async def topology_version(self) -> int:
        link = self.link
        key = self._key("topo", "ver")
        version = await self._run(lambda: link.execute("GET", key), "reading the topology version")
        return int(version or 0)

    async def add_exchange(self, exchange: Exchange) -> Exchange:
        record = _dumps(_exchange_record(exchange))
        stored = await self._script(
            "ADD_EXCHANGE", [exchange.name, record], f"declaring exchange {exchange.name!r}"
        )
        return _exchange_from(orjson.loads(stored))

    async def remove_exchange(self, name: str) -> None:
        await self._script("REMOVE_EXCHANGE", [name], f"deleting exchange {name!r}")

    async def add_queue(
        self, queue: Queue, *, owner: str | None = None
    ) -> tuple[Queue, str | None]:
        maxlen = queue.arguments.get("x-max-length")
        stored = await self._script(
            "ADD_QUEUE",
            [
                queue.name,
                _dumps(_queue_record(queue, owner)),
                "" if maxlen is None else int(maxlen),
                repr(time.time()),
            ],
            f"declaring queue {queue.name!r}",
        )
        return _queue_from(orjson.loads(stored))

    async def remove_queue(self, name: str) -> int:
        return int(await self._script("REMOVE_QUEUE", [name], f"deleting queue {name!r}"))

    async def add_binding(self, bound: BoundBinding) -> None:
        await self._script("ADD_BINDING", [_binding_field(bound)], f"binding queue {bound.queue!r}")

    async def remove_binding(self, bound: BoundBinding) -> None:
        await self._script(
            "REMOVE_BINDING", [_binding_field(bound)], f"unbinding queue {bound.queue!r}"
        )

    # messages

    async def enqueue(
        self,
        messages: Sequence[NewMessage],
        *,
        topology_version: int,
        connection: str,
        settle: Sequence[DeliveryTag] = (),
    ) -> list[StoredMessage]:
        """See :meth:`Storage.enqueue`. Concurrent calls share one script call (group commit);
        each keeps its own topology check, settlement and overflow."""
        settled = _tags(settle)
        group: list[Any] = [topology_version, connection, len(settled), *settled, len(messages)]
        group.extend(_pack(m, self._new_id()) for m in messages)
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
            raise StaleTopology(f"topology changed since version {topology_version}")
        return _messages(reply)

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
            replies = await self._script("ENQUEUE", argv, "publishing")
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
        self,
        queues: Sequence[str],
        *,
        connection: str,
        limit: int,
        ack: Sequence[DeliveryTag] = (),
    ) -> list[StoredMessage]:
        acks = _tags(ack)
        args: list[Any] = [
            connection,
            min(limit, _MAX_BATCH),
            repr(time.time()),
            next(self._requests),
            len(acks),
            *acks,
            *queues,
        ]
        messages, due = await self._script("DEQUEUE", args, "fetching messages")
        # The next look at these queues' due times is free: listeners are woken by any new
        # delayed message, so a consumer never sleeps past one published after this answer.
        if len(self._due_hints) > 1000:
            self._due_hints.clear()
        self._due_hints[frozenset(queues)] = None if due is None else float(due)
        return _messages(messages)

    async def claim_expired(self, *, connection: str, limit: int) -> list[StoredMessage]:
        reply = await self._script(
            "CLAIM_EXPIRED",
            [connection, min(limit, _MAX_BATCH), repr(time.time())],
            "expiring messages",
        )
        return _messages(reply)

    async def ack(self, tags: Sequence[DeliveryTag], *, connection: str) -> int:
        valid = _tags(tags)
        if not valid:
            return 0
        return int(await self._script("ACK", [connection, *valid], "acking"))

    async def release(self, tags: Sequence[DeliveryTag], *, connection: str) -> int:
        valid = _tags(tags)
        if not valid:
            return 0
        return int(await self._script("RELEASE", [connection, *valid], "requeueing"))

    async def next_due(self, queues: Sequence[str]) -> float | None:
        if not queues:
            return None
        key = frozenset(queues)
        if key in self._due_hints:
            return self._due_hints.pop(key)
        reply = await self._script(
            "NEXT_DUE", [repr(time.time()), *queues], "reading delayed messages"
        )
        return None if reply is None else float(reply)

    async def next_expiry(self) -> float | None:
        link = self.link
        key = self._key("exp")
        first = await self._run(
            lambda: link.execute("ZRANGE", key, 0, 0, "WITHSCORES"), "reading message expiry"
        )
        if not first:
            return None
        head = first[0]  # RESP3 pairs each member with its score; RESP2 flattens them
        return float(head[1] if isinstance(head, list) else first[1])

    async def purge(self, queue: str) -> int:
        return int(await self._script("PURGE", [queue], f"purging queue {queue!r}"))

    async def stats(self, queue: str) -> QueueStats:
        ready, unacked, consumers = await self._script(
            "STATS", [queue, repr(time.time())], f"reading stats of queue {queue!r}"
        )
        return QueueStats(queue, int(ready), int(unacked), int(consumers))

    # connections and consumers

    async def renew(self, connection: str, *, lease: float) -> bool:
        known = await self._script(
            "RENEW", [connection, repr(time.time() + lease)], "renewing the connection lease"
        )
        first = connection not in self._renewed
        self._renewed.add(connection)
        return bool(known) or first

    async def disconnect(self, connection: str) -> list[str]:
        idle = await self._script("DISCONNECT", [connection, repr(time.time())], "disconnecting")
        self._renewed.discard(connection)
        return [q.decode() for q in idle]

    async def reap(self) -> Reaped:
        dead, idle = await self._script("REAP", [repr(time.time())], "reaping dead connections")
        return Reaped(
            tuple(c.decode() for c in dead), tuple(dict.fromkeys(q.decode() for q in idle))
        )

    async def add_consumer(self, connection: str, tag: str, queues: Sequence[str]) -> None:
        await self._script(
            "ADD_CONSUMER",
            [connection, tag, repr(time.time()), *queues],
            f"registering consumer {tag!r}",
        )

    async def remove_consumer(self, connection: str, tag: str) -> list[str]:
        idle = await self._script(
            "REMOVE_CONSUMER",
            [connection, tag, repr(time.time())],
            f"removing consumer {tag!r}",
        )
        return [q.decode() for q in idle]

    async def activity(self, queues: Sequence[str]) -> dict[str, QueueActivity]:
        if not queues:
            return {}
        reply = await self._script(
            "ACTIVITY", [repr(time.time()), *queues], "reading queue activity"
        )
        return {
            reply[i].decode(): QueueActivity(float(reply[i + 1]), int(reply[i + 2]))
            for i in range(0, len(reply), 3)
        }

    async def listen(self, queues: Sequence[str]) -> Listener:
        hub = self._hub
        if hub is None:
            raise BrokerUnavailable(f"Redis storage for {redacted(self._url)} is not open")
        listener = _RedisListener(hub, [self._key("w", q).encode() for q in queues])
        await listener.start()
        return listener


_OPTIONS: dict[str, tuple[type, Any]] = {
    "key_prefix": (str, "conveyor:"),
    "lease": (float, 30.0),
    "poll_interval": (float, 1.0),
    "reconnect_timeout": (float, 60.0),
    "socket_timeout": (float, 10.0),
}


class RedisTransport(VirtualTransport):
    """The virtual broker on Redis: one topology and one set of queues for every process."""

    capabilities: ClassVar[Capabilities] = virtual_capabilities(shared=True)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> Self:
        check_url(url, own_options=_OPTIONS)
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = [(k, v) for k, v in query if k in _OPTIONS]
        theirs = [(k, v) for k, v in query if k not in _OPTIONS]
        values = parse_options(
            parts._replace(query=urlencode(ours)).geturl(), options or {}, _OPTIONS
        )
        storage = RedisStorage(
            parts._replace(query=urlencode(theirs)).geturl(),
            key_prefix=values["key_prefix"],
            reconnect_timeout=values["reconnect_timeout"],
            socket_timeout=values["socket_timeout"],
        )
        return cls(url, storage, lease=values["lease"], poll_interval=values["poll_interval"])
