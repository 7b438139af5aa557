"""``redis://...?layout=kombu``: Redis in kombu's layout, so a Celery service and a conveyor
service on one Redis broker see each other's messages, both ways.

The keys are kombu's (see :mod:`.kombu_layout`): queues are lists per priority step, bindings
``_kombu.binding.*`` sets, unacked messages the ``unacked`` hash and ``unacked_index`` sorted
set. What kombu gives, this gives; what it lacks, conveyor adds beside it under
``_conveyor.kombu.*`` keys kombu never reads:

- priorities are the routing guide's emulated steps (``priority_steps``, default 0, 3, 6, 9),
  **0 highest**, as kombu orders them; FIFO within a step;
- redelivery is the visibility timeout (``visibility_timeout``, default 3600 s, kombu's): a
  delivery unacked that long goes back to its queues, whoever's it was. conveyor keeps renewing
  the deliveries it holds, so its long tasks are not handed out twice; a Celery worker does not;
- exchange types are remembered (kombu keeps them in each process only; an exchange nobody here
  declared is direct, as kombu assumes); queue records and consumer counts are conveyor's own;
- ``publish(delay=...)`` keeps the message in ``_conveyor.kombu.delayed`` until due; any
  connected conveyor transport moves due ones into their lists;
- the default exchange ``""`` delivers to the list named by the routing key, declared here or
  not, as kombu does (a Celery caller's reply queue is never declared on this side);
- fanout exchanges deliver to the bound queues' lists (kombu sends fanout over pub/sub, so a
  Celery *broadcast* consumer does not see a conveyor broadcast);
- headers exchanges, alternate exchanges, TTLs, ``x-expires``, ``x-max-length`` and
  ``x-delivery-limit`` have no place in kombu's layout and are refused when declared.

Options (URL query or ``broker_transport_options``): ``layout`` (``kombu``), kombu's
``global_keyprefix``, ``visibility_timeout``, ``priority_steps``, ``queue_order_strategy``
(``round_robin``, kombu's default, or ``priority``/``sorted``), and ``poll_interval`` (default
1 s: how long one BRPOP blocks), ``reconnect_timeout``, ``socket_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from importlib.resources import files
from typing import Any, ClassVar, Self

import orjson
import redis.asyncio as aioredis

from conveyor.errors import (
    ConfigurationError,
    NotFound,
    PreconditionFailed,
    ProtocolError,
    TopologyError,
    TransportError,
    Unroutable,
)
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, ExchangeType, Queue
from conveyor.routing.topology import BoundBinding
from conveyor.transports.base import (
    Capabilities,
    Consumer,
    Delivery,
    Outgoing,
    QueueStats,
    Subscription,
    Transport,
)
from conveyor.transports.redis import kombu_layout as layout
from conveyor.transports.redis.client import make_client, run, split_url
from conveyor.transports.redis.kombu_consumer import KombuConsumer
from conveyor.urls import parse_options, redacted

__all__ = ["KombuRedisTransport"]

log = logging.getLogger("conveyor.redis")

_OPTIONS: dict[str, tuple[type, Any]] = {
    "layout": (str, "kombu"),
    "global_keyprefix": (str, ""),
    "visibility_timeout": (float, 3600.0),
    "priority_steps": (str, ""),
    "queue_order_strategy": (str, "round_robin"),
    "poll_interval": (float, 1.0),
    "reconnect_timeout": (float, 60.0),
    "socket_timeout": (float, 10.0),
}
_STRATEGIES = ("round_robin", "priority", "sorted")
# Queue arguments kombu's layout can honour (priorities are its steps; dead-lettering on reject).
_KEPT_ARGUMENTS = frozenset(
    {"x-max-priority", "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-queue-type"}
)

_SCRIPTS = files("conveyor.transports.redis") / "scripts"
# kombu_take.lua: pop up to a prefetch room of messages in priority order, recording each in
# kombu's unacked hash and index verbatim; kombu_promote.lua: move due delayed messages.
_TAKE = (_SCRIPTS / "kombu_take.lua").read_text(encoding="utf-8")
_PROMOTE = (_SCRIPTS / "kombu_promote.lua").read_text(encoding="utf-8")


def _options(url: str, given: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[int, ...]]:
    given = dict(given)
    steps_value = given.pop("priority_steps", None)
    values = parse_options(url, given, _OPTIONS)
    if values["layout"] != "kombu":
        raise ConfigurationError(f"this transport is the kombu layout, not {values['layout']!r}")
    if values["queue_order_strategy"] not in _STRATEGIES:
        raise ConfigurationError(
            f"option 'queue_order_strategy' must be one of {', '.join(_STRATEGIES)}, got "
            f"{values['queue_order_strategy']!r}"
        )
    steps = layout.priority_steps(steps_value if steps_value is not None else None)
    if steps_value is None and values["priority_steps"]:
        steps = layout.priority_steps(values["priority_steps"])
    return values, steps


class KombuRedisTransport(Transport):
    """conveyor's Transport over kombu's Redis layout (see the module text for what differs)."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        native_exchanges=False,
        max_priority=9,
        delayed_delivery=True,
        direct_reply_to=False,
        shared=True,
        lowest_priority_first=True,
    )

    def __init__(
        self, url: str, client_url: str, options: Mapping[str, Any], steps: tuple[int, ...]
    ) -> None:
        self.url = url
        self._client_url = client_url
        self.steps = steps
        self.prefix: str = options["global_keyprefix"]
        self.visibility_timeout: float = options["visibility_timeout"]
        self.poll_interval: float = options["poll_interval"]
        self.strategy: str = options["queue_order_strategy"]
        self._patience: float = options["reconnect_timeout"]
        self._socket_timeout: float = options["socket_timeout"]
        self.connection_id = uuid.uuid4().hex
        self._client: aioredis.Redis | None = None
        self._exchange_types: dict[str, ExchangeType] = {}
        self._held: dict[str, tuple[str, KombuConsumer | None]] = {}
        self._consumers: list[KombuConsumer] = []
        self._owned_queues: set[str] = set()
        self._housekeeper: asyncio.Task[None] | None = None
        self._acks: list[str] = []
        self._ack_flush: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> Self:
        own_url, client_url = split_url(url, _OPTIONS)
        values, steps = _options(own_url, options or {})
        return cls(url, client_url, values, steps)

    def __repr__(self) -> str:
        return f"<KombuRedisTransport {redacted(self.url)}>"

    # plumbing

    def _k(self, name: str) -> str:
        return self.prefix + name

    async def _call(self, doing: str, call: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        client = self._client
        if client is None or self._closed:
            raise TransportError(f"the Redis transport is not connected (while {doing})")
        return await run(
            lambda: call(client),
            url=self.url,
            doing=doing,
            patience=self._patience,
            timeout=self._socket_timeout + self.poll_interval,
        )

    async def connect(self) -> None:
        if self._client is not None:
            return
        self._client = make_client(self._client_url)
        self._closed = False
        await self._call("connecting", lambda c: c.ping())
        self._housekeeper = asyncio.get_running_loop().create_task(self._housekeep())

    async def close(self) -> None:
        if self._client is None or self._closed:
            return
        for consumer in list(self._consumers):
            await consumer.cancel()
        if self._ack_flush is not None:
            with contextlib.suppress(Exception):
                await self._ack_flush
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._housekeeper
        with contextlib.suppress(Exception):
            for tag, (queue, _) in list(self._held.items()):
                await self._restore(tag, queue)
            for name in list(self._owned_queues):
                await self.delete_queue(name)
        self._closed = True
        client, self._client = self._client, None
        await client.aclose()

    # exchanges

    async def _exchange_type(self, name: str) -> ExchangeType:
        """The type of exchange ``name``: declared here, by another conveyor process, or only
        bound by kombu (direct, as kombu assumes); NotFound if none of these."""
        known = self._exchange_types.get(name)
        if known is not None:
            return known
        shared = await self._call(
            "reading exchange types", lambda c: c.hget(self._k("_conveyor.kombu.exchanges"), name)
        )
        if shared is not None:
            kind = ExchangeType(shared.decode())
        elif await self._call(
            "reading bindings", lambda c: c.exists(self._k(layout.BINDING_PREFIX + name))
        ):
            kind = ExchangeType.DIRECT
        else:
            raise NotFound(f"exchange {name!r} does not exist: declare it first")
        self._exchange_types[name] = kind
        return kind

    async def declare_exchange(self, exchange: Exchange, *, passive: bool = False) -> None:
        if exchange.is_default:
            return
        if passive:
            await self._exchange_type(exchange.name)
            return
        if exchange.type is ExchangeType.HEADERS or exchange.alternate_exchange:
            raise TopologyError(
                f"exchange {exchange.name!r}: kombu's Redis layout has no headers exchanges or "
                "alternate exchanges; use the conveyor layout (the default) or RabbitMQ"
            )
        key = self._k("_conveyor.kombu.exchanges")
        previous = await self._call("declaring an exchange", lambda c: c.hget(key, exchange.name))
        if previous is not None and previous.decode() != exchange.type.value:
            raise PreconditionFailed(
                f"exchange {exchange.name!r} exists as {previous.decode()}, not "
                f"{exchange.type.value}: delete it first or use another name"
            )
        if previous is None:
            await self._call(
                "declaring an exchange", lambda c: c.hset(key, exchange.name, exchange.type.value)
            )
        self._exchange_types[exchange.name] = exchange.type

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        table = self._k(layout.BINDING_PREFIX + name)
        if if_unused and await self._call("reading bindings", lambda c: c.scard(table)):
            raise PreconditionFailed(f"exchange {name!r} still has queues bound to it")
        permanent = self._k(f"_kombu.binding_permanent.{name}")
        await self._call("deleting an exchange", lambda c: c.delete(table, permanent))
        await self._call(
            "deleting an exchange",
            lambda c: c.hdel(self._k("_conveyor.kombu.exchanges"), name),
        )
        self._exchange_types.pop(name, None)

    # queues

    async def _queue_record(self, name: str) -> dict[str, Any] | None:
        raw = await self._call(
            "reading a queue", lambda c: c.hget(self._k("_conveyor.kombu.queues"), name)
        )
        if raw is not None:
            record: dict[str, Any] = orjson.loads(raw)
            return record
        keys = [self._k(k) for k in layout.queue_keys(name, self.steps)]
        if await self._call("reading a queue", lambda c: c.exists(*keys)):
            return {}
        return None

    async def _existing(self, name: str) -> dict[str, Any]:
        record = await self._queue_record(name)
        if record is None:
            raise NotFound(f"queue {name!r} does not exist: declare it first")
        return record

    async def declare_queue(self, queue: Queue, *, passive: bool = False) -> QueueStats:
        if passive:
            await self._existing(queue.name)
            return await self.queue_stats(queue.name)
        refused = sorted(set(queue.arguments) - _KEPT_ARGUMENTS)
        if refused:
            raise TopologyError(
                f"queue {queue.name!r}: kombu's Redis layout cannot keep {', '.join(refused)}; "
                "use the conveyor layout (the default) or RabbitMQ for them"
            )
        record = {"arguments": dict(queue.arguments), "exclusive": queue.exclusive}
        key = self._k("_conveyor.kombu.queues")
        stored = await self._call("declaring a queue", lambda c: c.hget(key, queue.name))
        if stored is not None and orjson.loads(stored)["arguments"] != record["arguments"]:
            raise PreconditionFailed(
                f"queue {queue.name!r} exists with arguments {orjson.loads(stored)['arguments']}, "
                f"not {record['arguments']}: delete it first or use another name"
            )
        if stored is None:
            await self._call(
                "declaring a queue", lambda c: c.hset(key, queue.name, orjson.dumps(record))
            )
        if queue.exclusive or queue.auto_delete:
            self._owned_queues.add(queue.name)
        await self._declare_bindings(queue, self._bind)
        return await self.queue_stats(queue.name)

    async def _consumer_count(self, name: str) -> int:
        key = self._k(f"_conveyor.kombu.consumers.{name}")
        count: int = await self._call(
            "counting consumers", lambda c: c.zcount(key, time.time(), "+inf")
        )
        return count

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        if await self._queue_record(name) is None:
            return 0
        stats = await self.queue_stats(name)
        if if_unused and stats.consumers:
            raise PreconditionFailed(f"queue {name!r} has {stats.consumers} consumer(s)")
        if if_empty and stats.ready:
            raise PreconditionFailed(f"queue {name!r} has {stats.ready} message(s)")
        suffix = layout.SEP + name
        async for table in self._binding_tables():
            members = await self._call("reading bindings", _cmd("smembers", table))
            gone = [m for m in members if m.decode("utf-8", "replace").endswith(suffix)]
            if gone:
                await self._call("unbinding", _cmd("srem", table, *gone))
        keys = [self._k(k) for k in layout.queue_keys(name, self.steps)]
        await self._call(
            "deleting a queue",
            lambda c: c.delete(*keys, self._k(f"_conveyor.kombu.consumers.{name}")),
        )
        await self._call(
            "deleting a queue", lambda c: c.hdel(self._k("_conveyor.kombu.queues"), name)
        )
        self._owned_queues.discard(name)
        return stats.ready

    async def _binding_tables(self) -> AsyncIterator[str]:
        client = self._client
        assert client is not None
        for prefix in (layout.BINDING_PREFIX, "_kombu.binding_permanent."):
            async for key in client.scan_iter(match=self._k(prefix) + "*", count=500):
                yield key.decode()

    async def purge_queue(self, name: str) -> int:
        await self._existing(name)
        keys = [self._k(k) for k in layout.queue_keys(name, self.steps)]

        async def purge(c: aioredis.Redis) -> int:
            async with c.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.llen(key)
                pipe.delete(*keys)
                answers = await pipe.execute()
            return int(sum(answers[:-1]))

        purged: int = await self._call("purging a queue", purge)
        return purged

    async def _bind(self, binding: BoundBinding) -> None:
        kind = await self._exchange_type(binding.exchange)
        await self._existing(binding.queue)
        member = layout.binding_member(binding.queue, binding.routing_key, kind)
        table, permanent = self._binding_keys(binding.exchange)

        async def bind(c: aioredis.Redis) -> None:
            async with c.pipeline(transaction=True) as pipe:
                pipe.sadd(table, member)
                pipe.sadd(permanent, member)
                await pipe.execute()

        await self._call("binding a queue", bind)

    async def _unbind(self, binding: BoundBinding) -> None:
        kind = self._exchange_types.get(binding.exchange, ExchangeType.DIRECT)
        member = layout.binding_member(binding.queue, binding.routing_key, kind)
        table, permanent = self._binding_keys(binding.exchange)
        await self._call("unbinding a queue", lambda c: c.srem(table, member))
        await self._call("unbinding a queue", lambda c: c.srem(permanent, member))

    def _binding_keys(self, exchange: str) -> tuple[str, str]:
        """The keys of ``exchange``'s binding table and of kombu's permanent copy of it."""
        return (
            self._k(layout.BINDING_PREFIX + exchange),
            self._k(f"_kombu.binding_permanent.{exchange}"),
        )

    # publishing

    async def _destinations(self, exchange: str, routing_key: str) -> list[str]:
        if not exchange:
            return [routing_key]
        kind = await self._exchange_type(exchange)
        table = self._k(layout.BINDING_PREFIX + exchange)
        members = await self._call("reading bindings", _cmd("smembers", table))
        return layout.routed_queues(
            [m.decode("utf-8", "replace") for m in members], kind, routing_key
        )

    async def _publish(self, message: Outgoing) -> int:
        envelope, exchange, routing_key = message.envelope, message.exchange, message.routing_key
        delay = message.delay
        queues = await self._destinations(exchange, routing_key)
        if not queues:
            if message.mandatory:
                raise Unroutable(
                    f"exchange {exchange!r} routes {routing_key!r} to no queue",
                    exchange=exchange,
                    routing_key=routing_key,
                )
            return 0
        payload = layout.to_payload(envelope, exchange, routing_key, str(uuid.uuid4()))
        keys = [layout.step_key(q, envelope.priority, self.steps) for q in queues]
        if delay is not None and delay > 0:
            item = orjson.dumps({"keys": keys, "payload": payload.decode()})
            due = time.time() + delay
            delayed = self._k("_conveyor.kombu.delayed")
            await self._call("publishing", lambda c: c.zadd(delayed, {item: due}))
            return len(queues)

        async def push(c: aioredis.Redis) -> None:
            async with c.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.lpush(self._k(key), payload)
                await pipe.execute()

        await self._call("publishing", push)
        return len(queues)

    # receiving

    def _order(self, queues: Sequence[str]) -> list[str]:
        return sorted(queues) if self.strategy == "sorted" else list(queues)

    async def _record(self, raw: bytes, queue: str, no_ack: bool) -> Delivery:
        """The Delivery for ``raw`` popped from ``queue``, recorded as unacked (unless
        ``no_ack``); a payload conveyor cannot read is delivered as such, to be dead-lettered."""
        try:
            message = layout.from_payload(raw)
        except ProtocolError as exc:
            envelope = Envelope(
                body=raw,
                content_type="application/x-unreadable",
                headers={"x-conveyor-unreadable": str(exc)},
            )
            tag = uuid.uuid4().hex
            message = layout.from_payload(layout.to_payload(envelope, "", queue, tag))
        tag = message.tag or uuid.uuid4().hex
        if not no_ack:
            entry = orjson.dumps([message.raw, message.exchange, message.routing_key])

            async def hold(c: aioredis.Redis) -> None:
                async with c.pipeline(transaction=True) as pipe:
                    pipe.zadd(self._k("unacked_index"), {tag: time.time()})
                    pipe.hset(self._k("unacked"), tag, entry)
                    await pipe.execute()

            await self._call("recording a delivery", hold)
            self._held[tag] = (queue, None)
        return message.delivery(queue, tag)

    async def _push_back(self, key: str, raw: bytes) -> None:
        """Put ``raw``, popped from list ``key`` but not handed out, back at its head."""
        await self._call("giving a message back", lambda c: c.rpush(key, raw))

    async def _pop(self, queues: Sequence[str], timeout: float) -> tuple[str, bytes, bytes] | None:
        keys = [self._k(k) for step in self.steps for k in _step_keys(queues, step)]
        answer = await self._call(
            "waiting for a message", lambda c: c.brpop(keys, timeout=max(timeout, 0.01))
        )
        if answer is None:
            return None
        key, raw = answer
        name = key.decode()[len(self.prefix) :].rsplit(layout.SEP, 1)[0]
        return name, key, raw

    async def _take(self, queues: Sequence[str], room: int, no_ack: bool) -> list[Delivery]:
        """Up to ``room`` ready messages of ``queues`` (priority steps first), popped and
        recorded as unacked in one script; none waits."""
        keys = [self._k(k) for step in self.steps for k in _step_keys(queues, step)]
        flat = await self._call(
            "taking messages",
            lambda c: c.eval(
                _TAKE,
                2 + len(keys),
                self._k("unacked"),
                self._k("unacked_index"),
                *keys,
                room,
                time.time(),
                "0" if no_ack else "1",
            ),
        )
        deliveries: list[Delivery] = []
        for index in range(0, len(flat), 3):
            key, raw, tag = flat[index], flat[index + 1], flat[index + 2].decode()
            queue = key.decode()[len(self.prefix) :].rsplit(layout.SEP, 1)[0]
            if not tag:
                deliveries.append(await self._record(raw, queue, no_ack))
                continue
            message = layout.from_payload(raw)
            if not no_ack:
                self._held[tag] = (queue, None)
            deliveries.append(message.delivery(queue, tag))
        return deliveries

    async def get(self, queue: str, *, no_ack: bool = False) -> Delivery | None:
        await self._existing(queue)
        for key in layout.queue_keys(queue, self.steps):
            raw = await self._call("getting a message", _cmd("rpop", self._k(key)))
            if raw is not None:
                return await self._record(raw, queue, no_ack)
        return None

    async def _consume(self, subscription: Subscription) -> Consumer:
        for name in subscription.queues:
            await self._existing(name)
        ordered = replace(subscription, queues=tuple(self._order(subscription.queues)))
        tag = subscription.tag or f"ctag-{uuid.uuid4().hex[:12]}"
        consumer = KombuConsumer(self, ordered, tag)
        self._consumers.append(consumer)
        await self._register(consumer)
        return consumer

    async def _register(self, consumer: KombuConsumer) -> None:
        expiry = time.time() + max(10.0, 5 * self.poll_interval)
        member = f"{self.connection_id}:{consumer.tag}"

        async def register(c: aioredis.Redis) -> None:
            async with c.pipeline(transaction=False) as pipe:
                for name in consumer.queues:
                    pipe.zadd(self._k(f"_conveyor.kombu.consumers.{name}"), {member: expiry})
                await pipe.execute()

        await self._call("registering a consumer", register)

    async def _unregister(self, consumer: KombuConsumer) -> None:
        member = f"{self.connection_id}:{consumer.tag}"
        for name in consumer.queues:
            key = self._k(f"_conveyor.kombu.consumers.{name}")
            await self._call("removing a consumer", _cmd("zrem", key, member))

    # settling

    def _settled(self, tag: Any) -> tuple[str, KombuConsumer | None] | None:
        held = self._held.pop(str(tag), None)
        for consumer in self._consumers:
            consumer.settled(str(tag))
        return held

    async def _forget(self, tag: str) -> None:
        async def forget(c: aioredis.Redis) -> None:
            async with c.pipeline(transaction=True) as pipe:
                pipe.zrem(self._k("unacked_index"), tag)
                pipe.hdel(self._k("unacked"), tag)
                await pipe.execute()

        await self._call("acking", forget)

    async def ack(self, delivery: Delivery) -> None:
        """Settle ``delivery``; the removal from ``unacked`` is written in the background,
        batched with other acks (flushed by :meth:`close`). If it never lands, the message
        comes back after the visibility timeout: at least once, never lost."""
        if self._settled(delivery.tag) is None:
            return
        self._acks.append(str(delivery.tag))
        if self._ack_flush is None or self._ack_flush.done():
            self._ack_flush = asyncio.get_running_loop().create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        while self._acks:
            tags, self._acks = self._acks, []

            async def forget(c: aioredis.Redis, tags: list[str] = tags) -> None:
                async with c.pipeline(transaction=True) as pipe:
                    pipe.zrem(self._k("unacked_index"), *tags)
                    pipe.hdel(self._k("unacked"), *tags)
                    await pipe.execute()

            try:
                await self._call("acking", forget)
            except Exception as exc:
                log.warning(
                    "could not ack %d message(s) (%s); they come back after the visibility timeout",
                    len(tags),
                    exc,
                )

    async def nack(self, delivery: Delivery, *, requeue: bool = True) -> None:
        if self._settled(delivery.tag) is None:
            return
        if requeue:
            await self._restore(str(delivery.tag), delivery.queue)
            return
        record = await self._queue_record(delivery.queue) or {}
        arguments = record.get("arguments") or {}
        dlx = arguments.get("x-dead-letter-exchange")
        await self._forget(str(delivery.tag))
        if dlx is not None:
            dead = delivery.envelope.replace_headers(
                **{"x-first-death-reason": "rejected", "x-first-death-queue": delivery.queue}
            )
            key = arguments.get("x-dead-letter-routing-key") or delivery.routing_key
            await self.publish(dead, exchange=str(dlx), routing_key=str(key))

    async def _restore(self, tag: str, queue: str | None) -> bool:
        """Move unacked ``tag`` back to the head of ``queue`` (None: to the queues its exchange
        and routing key reach, as kombu restores), marked redelivered; False if gone."""
        client = self._client
        assert client is not None
        unacked, index = self._k("unacked"), self._k("unacked_index")

        async def restore(pipe: Any) -> bool:
            raw = await pipe.hget(unacked, tag)
            if raw is None:
                pipe.multi()
                pipe.zrem(index, tag)
                return False
            payload, exchange, routing_key = orjson.loads(raw)
            payload.setdefault("headers", {})["redelivered"] = True
            info = payload.get("properties", {}).get("delivery_info")
            if isinstance(info, dict):
                info["redelivered"] = True
            queues = [queue] if queue else await self._destinations(exchange, routing_key)
            priority = payload.get("properties", {}).get("priority")
            pipe.multi()
            pipe.zrem(index, tag)
            pipe.hdel(unacked, tag)
            for name in queues:
                key = layout.step_key(
                    name, priority if isinstance(priority, int) else 0, self.steps
                )
                pipe.rpush(self._k(key), orjson.dumps(payload))
            return True

        done: bool = await run(
            lambda: client.transaction(restore, unacked, value_from_callable=True),
            url=self.url,
            doing="giving a message back",
            patience=self._patience,
            timeout=self._socket_timeout,
        )
        return done

    async def queue_stats(self, name: str) -> QueueStats:
        await self._existing(name)
        keys = [self._k(k) for k in layout.queue_keys(name, self.steps)]

        async def lengths(c: aioredis.Redis) -> list[int]:
            async with c.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.llen(key)
                result: list[int] = await pipe.execute()
                return result

        ready = sum(await self._call("reading queue stats", lengths))
        unacked = sum(1 for queue, _ in self._held.values() if queue == name)
        return QueueStats(name, ready, unacked, await self._consumer_count(name))

    # housekeeping

    async def _housekeep(self) -> None:
        """Move due delayed messages, renew what this process holds, bring back deliveries
        past the visibility timeout, and keep consumer registrations alive."""
        renewed = swept = 0.0
        while True:
            await asyncio.sleep(min(self.poll_interval, 1.0))
            try:
                await self._call(
                    "moving due messages",
                    lambda c: c.eval(
                        _PROMOTE, 1, self._k("_conveyor.kombu.delayed"), time.time(), self.prefix
                    ),
                )
                now = time.monotonic()
                if now - renewed >= min(self.visibility_timeout / 3, 5.0):
                    renewed = now
                    await self._renew()
                if now - swept >= min(self.visibility_timeout / 2, 10.0):
                    swept = now
                    await self._restore_visible()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("kombu layout housekeeping failed: %s", exc)

    async def _renew(self) -> None:
        tags = list(self._held)
        if tags:
            index = self._k("unacked_index")
            now = time.time()
            await self._call(
                "renewing deliveries", lambda c: c.zadd(index, dict.fromkeys(tags, now), xx=True)
            )
        for consumer in self._consumers:
            await self._register(consumer)

    async def _restore_visible(self) -> None:
        """kombu's ``restore_visible``: deliveries unacked for longer than the visibility
        timeout go back, under kombu's own ``unacked_mutex`` so one process does it at a time."""
        mutex, token = self._k("unacked_mutex"), uuid.uuid4().hex
        got = await self._call("locking", lambda c: c.set(mutex, token, nx=True, ex=300))
        if not got:
            return
        try:
            ceiling = time.time() - self.visibility_timeout
            index = self._k("unacked_index")
            tags = await self._call(
                "finding lost deliveries",
                lambda c: c.zrangebyscore(index, "-inf", ceiling, start=0, num=100),
            )
            for tag in tags:
                if await self._restore(tag.decode(), None):
                    log.warning("delivery %s passed the visibility timeout; given back", tag)
        finally:
            with contextlib.suppress(Exception):
                if await self._call("unlocking", lambda c: c.get(mutex)) == token.encode():
                    await self._call("unlocking", lambda c: c.delete(mutex))


def _cmd(name: str, *args: Any) -> Callable[[aioredis.Redis], Awaitable[Any]]:
    """A call of Redis command ``name`` with ``args``, for :meth:`KombuRedisTransport._call`."""

    def call(client: aioredis.Redis) -> Awaitable[Any]:
        result: Awaitable[Any] = getattr(client, name)(*args)
        return result

    return call


def _step_keys(queues: Sequence[str], step: int) -> list[str]:
    return [f"{q}{layout.SEP}{step}" if step else q for q in queues]
