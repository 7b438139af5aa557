"""``memory://``: the virtual broker with its storage in this process's memory.

Every :class:`MemoryTransport` opened in one process with the same URL name shares one broker,
``memory://`` and ``memory://default`` included, so an app's producer and its worker (even on
different event loops or threads) see each other's queues. A named broker lives as long as the
process; use a unique name (``memory://test-<uuid>``) to start from an empty one. Nothing is
shared between processes and nothing survives the process.

Options (URL query or ``options``): ``lease`` (seconds, default 30) and ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self
from urllib.parse import unquote, urlsplit

from conveyor.errors import BrokerUnavailable, ConfigurationError
from conveyor.lifecycle import PerName
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, Queue
from conveyor.routing.topology import BoundBinding, Topology
from conveyor.transports.base import Capabilities, DeliveryTag, QueueStats
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
from conveyor.transports.virtual import VirtualTransport, virtual_capabilities
from conveyor.urls import parse_options

__all__ = ["MemoryStorage", "MemoryTransport", "memory_broker_names"]


@dataclass(slots=True)
class _Message:
    id: int
    queue: str
    envelope: Envelope
    exchange: str
    routing_key: str
    priority: int
    not_before: float | None
    expires_at: float | None
    order: int
    delivery_count: int = 0
    lease: str | None = None

    def stored(self) -> StoredMessage:
        return StoredMessage(
            tag=self.id,
            queue=self.queue,
            envelope=self.envelope,
            exchange=self.exchange,
            routing_key=self.routing_key,
            priority=self.priority,
            delivery_count=self.delivery_count,
            expires_at=self.expires_at,
        )


class _QueueState:
    __slots__ = ("definition", "delayed", "due", "heap", "leased", "owner", "used_at")

    def __init__(self, definition: Queue, owner: str | None) -> None:
        self.definition = definition
        self.owner = owner
        self.used_at = time.time()
        self.heap: list[tuple[int, int, int]] = []  # (-priority, order, id) of due messages
        self.due: set[int] = set()
        self.delayed: list[tuple[float, int]] = []  # (not_before, id)
        self.leased: set[int] = set()

    def push(self, message: _Message) -> None:
        self.due.add(message.id)
        heapq.heappush(self.heap, (-message.priority, message.order, message.id))


class _MemoryListener(EventListener):
    def __init__(self, broker: _MemoryBroker, queues: Sequence[str]) -> None:
        super().__init__()
        self._broker = broker
        self._queues = tuple(queues)
        self._loop = asyncio.get_running_loop()

    def signal(self) -> None:
        # a closed loop raises RuntimeError: nobody waits there any more
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    def _stop_listening(self) -> None:
        self._broker.unlisten(self, self._queues)


class _MemoryBroker:
    """One in-process broker: every structure is guarded by ``lock`` (loops may differ)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.version = 0
        self.snapshot: TopologySnapshot | None = None
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, _QueueState] = {}
        self.bindings: dict[BoundBinding, None] = {}
        self.messages: dict[int, _Message] = {}
        self.expiry: list[tuple[float, int]] = []
        self.connections: dict[str, float] = {}
        self.reaped: set[str] = set()
        self.leases: dict[str, set[int]] = {}
        self.consumers: dict[tuple[str, str], tuple[str, ...]] = {}
        self.listeners: dict[str, set[_MemoryListener]] = {}
        self.ids = itertools.count(1)
        self.orders = itertools.count(1)

    # topology

    def bump(self) -> None:
        self.version += 1
        self.snapshot = None

    def load(self) -> TopologySnapshot:
        if self.snapshot is None:
            topology = Topology.build(
                self.exchanges.values(),
                (s.definition for s in self.queues.values()),
                self.bindings,
            )
            owners = {n: s.owner for n, s in self.queues.items() if s.owner is not None}
            self.snapshot = TopologySnapshot(self.version, topology, owners)
        return self.snapshot

    def remove_queue(self, name: str) -> int:
        state = self.queues.pop(name, None)
        if state is None:
            return 0
        for b in [b for b in self.bindings if b.queue == name]:
            del self.bindings[b]
        for key in [k for k, qs in self.consumers.items() if name in qs]:
            rest = tuple(q for q in self.consumers[key] if q != name)
            if rest:
                self.consumers[key] = rest
            else:
                del self.consumers[key]
        removed = [i for i, m in self.messages.items() if m.queue == name]
        for i in removed:
            message = self.messages.pop(i)
            if message.lease is not None:
                self.leases.get(message.lease, set()).discard(i)
        self.bump()
        self.wake([name])
        return len(removed) - len(state.leased)

    # messages

    def wake(self, queues: Sequence[str]) -> None:
        for name in set(queues):
            for listener in self.listeners.get(name, ()):
                listener.signal()

    def unlisten(self, listener: _MemoryListener, queues: Sequence[str]) -> None:
        with self.lock:
            for name in queues:
                self.listeners.get(name, set()).discard(listener)

    def promote(self, state: _QueueState, now: float) -> None:
        while state.delayed and state.delayed[0][0] <= now:
            _, i = heapq.heappop(state.delayed)
            message = self.messages.get(i)
            if message is None or message.not_before is None or message.lease is not None:
                continue
            message.not_before = None
            message.order = next(self.orders)  # a delayed message joins the tail when due
            state.push(message)

    def pop_head(self, state: _QueueState) -> _Message | None:
        while state.heap:
            _, order, i = heapq.heappop(state.heap)
            message = self.messages.get(i)
            if message is None or message.lease is not None or message.order != order:
                continue
            if i not in state.due:
                continue
            state.due.discard(i)
            return message
        return None

    def lease(self, message: _Message, connection: str) -> None:
        message.lease = connection
        self.queues[message.queue].leased.add(message.id)
        self.leases.setdefault(connection, set()).add(message.id)

    def unlease(self, message: _Message) -> None:
        connection = message.lease
        if connection is not None:
            self.leases.get(connection, set()).discard(message.id)
        message.lease = None
        state = self.queues.get(message.queue)
        if state is None:
            return
        state.leased.discard(message.id)
        self.place(state, message)

    def place(self, state: _QueueState, message: _Message) -> None:
        """Make ``message`` wait in its queue ``state``: ready, or delayed until due; and
        watched for its expiry if it has one."""
        if message.not_before is None:
            state.push(message)
        else:
            heapq.heappush(state.delayed, (message.not_before, message.id))
        if message.expires_at is not None:
            heapq.heappush(self.expiry, (message.expires_at, message.id))

    def remove_leased(self, tags: Sequence[DeliveryTag], connection: str) -> int:
        count = 0
        owned = self.leases.get(connection)
        if not owned:
            return 0
        for tag in tags:
            if not isinstance(tag, int) or tag not in owned:
                continue
            owned.discard(tag)
            message = self.messages.pop(tag)
            state = self.queues.get(message.queue)
            if state is not None:
                state.leased.discard(tag)
            count += 1
        return count

    def disconnect(self, connection: str) -> list[str]:
        self.connections.pop(connection, None)
        woken: list[str] = []
        for i in sorted(self.leases.pop(connection, set())):
            message = self.messages.get(i)
            if message is not None:
                self.unlease(message)
                woken.append(message.queue)
        mine = [key for key in self.consumers if key[0] == connection]
        queues = {q for key in mine for q in self.consumers.pop(key)}
        counts = self.consumer_counts()
        self.wake(woken)
        return sorted(q for q in queues if q not in counts and q in self.queues)

    def consumer_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        now = time.time()
        for (connection, _), queues in self.consumers.items():
            if self.connections.get(connection, 0.0) < now:
                continue
            for q in queues:
                counts[q] = counts.get(q, 0) + 1
        return counts


# The process-wide brokers, one per URL name.
_broker: PerName[_MemoryBroker] = PerName(_MemoryBroker)


def memory_broker_names() -> list[str]:
    """The names of the in-process brokers created so far."""
    return _broker.names()


class MemoryStorage(Storage):
    """A connection's handle on an in-process broker (shared by name)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._b: _MemoryBroker | None = None

    @property
    def _broker(self) -> _MemoryBroker:
        if self._b is None:
            raise BrokerUnavailable(f"memory broker {self._name!r} is not open")
        return self._b

    async def open(self) -> None:
        self._b = _broker(self._name)

    async def close(self) -> None:
        self._b = None

    async def load_topology(self) -> TopologySnapshot:
        b = self._broker
        with b.lock:
            return b.load()

    async def topology_version(self) -> int:
        return self._broker.version

    async def add_exchange(self, exchange: Exchange) -> Exchange:
        b = self._broker
        with b.lock:
            stored = b.exchanges.get(exchange.name)
            if stored is None:
                stored = b.exchanges[exchange.name] = exchange
                b.bump()
            return stored

    async def remove_exchange(self, name: str) -> None:
        b = self._broker
        with b.lock:
            if b.exchanges.pop(name, None) is None:
                return
            for bound in [x for x in b.bindings if x.exchange == name]:
                del b.bindings[bound]
            b.bump()

    async def add_queue(
        self, queue: Queue, *, owner: str | None = None
    ) -> tuple[Queue, str | None]:
        b = self._broker
        with b.lock:
            state = b.queues.get(queue.name)
            if state is None:
                state = b.queues[queue.name] = _QueueState(queue, owner)
                b.bump()
            state.used_at = time.time()
            return state.definition, state.owner

    async def remove_queue(self, name: str) -> int:
        b = self._broker
        with b.lock:
            return b.remove_queue(name)

    async def add_binding(self, bound: BoundBinding) -> None:
        b = self._broker
        with b.lock:
            if bound not in b.bindings:
                b.bindings[bound] = None
                b.bump()

    async def remove_binding(self, bound: BoundBinding) -> None:
        b = self._broker
        with b.lock:
            if bound in b.bindings:
                del b.bindings[bound]
                b.bump()

    async def enqueue(
        self, messages: Sequence[NewMessage], writer: Writer, *, settle: Sequence[DeliveryTag] = ()
    ) -> list[StoredMessage]:
        b = self._broker
        overflow: list[StoredMessage] = []
        with b.lock:
            if b.version != writer.topology_version:
                raise StaleTopology(f"topology is at {b.version}, not {writer.topology_version}")
            b.remove_leased(settle, writer.connection)
            touched: dict[str, _QueueState] = {}
            now = time.time()
            for new in messages:
                state = b.queues[new.queue]
                if new.queue not in touched:
                    b.promote(state, now)  # what became due before this publish goes first
                message = _Message(
                    id=next(b.ids),
                    queue=new.queue,
                    envelope=new.envelope,
                    exchange=new.exchange,
                    routing_key=new.routing_key,
                    priority=new.priority,
                    not_before=new.not_before,
                    expires_at=new.expires_at,
                    order=next(b.orders),
                )
                b.messages[message.id] = message
                b.place(state, message)
                touched[new.queue] = state
            for state in touched.values():
                limit = state.definition.arguments.get("x-max-length")
                if limit is None:
                    continue
                b.promote(state, now)
                while len(state.due) > limit:
                    head = b.pop_head(state)
                    if head is None:
                        break
                    b.lease(head, writer.connection)
                    overflow.append(head.stored())
            b.wake(list(touched))
        return overflow

    async def dequeue(
        self, queues: Sequence[str], *, connection: str, limit: int, ack: Sequence[DeliveryTag] = ()
    ) -> list[StoredMessage]:
        b = self._broker
        taken: list[StoredMessage] = []
        with b.lock:
            b.remove_leased(ack, connection)
            now = time.time()
            for name in queues:
                state = b.queues.get(name)
                if state is None:
                    continue
                state.used_at = now
                b.promote(state, now)
                while len(taken) < limit:
                    message = b.pop_head(state)
                    if message is None:
                        break
                    message.delivery_count += 1
                    b.lease(message, connection)
                    taken.append(message.stored())
                if len(taken) >= limit:
                    break
        return taken

    async def claim_expired(self, *, connection: str, limit: int) -> list[StoredMessage]:
        b = self._broker
        claimed: list[StoredMessage] = []
        with b.lock:
            now = time.time()
            while b.expiry and len(claimed) < limit and b.expiry[0][0] <= now:
                _, i = heapq.heappop(b.expiry)
                message = b.messages.get(i)
                if message is None or message.lease is not None:
                    continue
                # expires_at comes after not_before, so a delayed message is due by now
                message.not_before = None
                b.queues[message.queue].due.discard(i)
                b.lease(message, connection)
                claimed.append(message.stored())
        return claimed

    async def ack(self, tags: Sequence[DeliveryTag], *, connection: str) -> int:
        b = self._broker
        with b.lock:
            return b.remove_leased(tags, connection)

    async def release(self, tags: Sequence[DeliveryTag], *, connection: str) -> int:
        b = self._broker
        with b.lock:
            owned = b.leases.get(connection, set())
            woken: list[str] = []
            for tag in tags:
                if not isinstance(tag, int) or tag not in owned:
                    continue
                message = b.messages[tag]
                b.unlease(message)
                woken.append(message.queue)
            b.wake(woken)
            return len(woken)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        b = self._broker
        with b.lock:
            soonest: float | None = None
            now = time.time()
            for name in queues:
                state = b.queues.get(name)
                if state is None:
                    continue
                while state.delayed:
                    at, i = state.delayed[0]
                    message = b.messages.get(i)
                    if message is None or message.not_before is None or message.lease:
                        heapq.heappop(state.delayed)
                        continue
                    if at > now and (soonest is None or at < soonest):
                        soonest = at
                    break
            return soonest

    async def next_expiry(self) -> float | None:
        b = self._broker
        with b.lock:
            while b.expiry:
                at, i = b.expiry[0]
                message = b.messages.get(i)
                if message is None or message.lease is not None:
                    heapq.heappop(b.expiry)
                    continue
                return at
            return None

    async def purge(self, queue: str) -> int:
        b = self._broker
        with b.lock:
            state = b.queues.get(queue)
            if state is None:
                return 0
            ready = [i for i, m in b.messages.items() if m.queue == queue and m.lease is None]
            for i in ready:
                del b.messages[i]
            state.heap.clear()
            state.due.clear()
            state.delayed.clear()
            return len(ready)

    async def stats(self, queue: str) -> QueueStats:
        b = self._broker
        with b.lock:
            state = b.queues.get(queue)
            if state is None:
                return QueueStats(queue, 0, 0, 0)
            delayed = sum(
                1
                for _, i in state.delayed
                if (m := b.messages.get(i)) is not None
                and m.not_before is not None
                and m.lease is None
            )
            return QueueStats(
                queue,
                ready=len(state.due) + delayed,
                unacked=len(state.leased),
                consumers=b.consumer_counts().get(queue, 0),
            )

    async def renew(self, connection: str, *, lease: float) -> bool:
        b = self._broker
        with b.lock:
            b.connections[connection] = time.time() + lease
            if connection in b.reaped:
                b.reaped.discard(connection)
                return False
            return True

    async def disconnect(self, connection: str) -> list[str]:
        b = self._broker
        with b.lock:
            return b.disconnect(connection)

    async def reap(self) -> Reaped:
        b = self._broker
        with b.lock:
            now = time.time()
            dead = [c for c, deadline in b.connections.items() if deadline < now]
            idle: list[str] = []
            for connection in dead:
                idle.extend(b.disconnect(connection))
                b.reaped.add(connection)
            return Reaped(tuple(dead), tuple(dict.fromkeys(idle)))

    async def add_consumer(self, connection: str, tag: str, queues: Sequence[str]) -> None:
        b = self._broker
        with b.lock:
            b.consumers[(connection, tag)] = tuple(queues)

    async def remove_consumer(self, connection: str, tag: str) -> list[str]:
        b = self._broker
        with b.lock:
            queues = b.consumers.pop((connection, tag), None)
            if not queues:
                return []
            counts = b.consumer_counts()
            now = time.time()
            for name in queues:
                state = b.queues.get(name)
                if state is not None:
                    state.used_at = now
            return [q for q in queues if q not in counts and q in b.queues]

    async def activity(self, queues: Sequence[str]) -> dict[str, QueueActivity]:
        b = self._broker
        with b.lock:
            counts = b.consumer_counts()
            return {
                name: QueueActivity(b.queues[name].used_at, counts.get(name, 0))
                for name in queues
                if name in b.queues
            }

    async def listen(self, queues: Sequence[str]) -> Listener:
        b = self._broker
        listener = _MemoryListener(b, queues)
        with b.lock:
            for name in queues:
                b.listeners.setdefault(name, set()).add(listener)
        return listener


_OPTIONS: dict[str, tuple[type, Any]] = {"lease": (float, 30.0), "poll_interval": (float, 1.0)}


class MemoryTransport(VirtualTransport):
    """The virtual broker in this process; see the module docstring for sharing by name."""

    capabilities: ClassVar[Capabilities] = virtual_capabilities(shared=False)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> Self:
        parts = urlsplit(url)
        if parts.scheme.lower() != "memory":
            raise ConfigurationError(f"not a memory:// URL: {url!r}")
        name = unquote(parts.netloc + parts.path).strip("/") or "default"
        values = parse_options(url, options or {}, _OPTIONS)
        return cls(
            url,
            MemoryStorage(name),
            lease=values["lease"],
            poll_interval=values["poll_interval"],
        )
