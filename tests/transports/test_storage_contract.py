"""The promises of :class:`conveyor.transports.storage.Storage`, run on every storage directly.

Each test names the docstring it checks (the module's, the class's, or a method's) and runs on
memory, SQLite and Redis alike: the ``storage`` fixture gives each implementation (Redis skips
without a server, and fails under ``CI``, as the other Redis tests do). Connections are plain
strings here, as the virtual transport makes them up; ``make_storage`` opens further handles
on the same broker, as other processes would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from conveyor import Envelope, Exchange, Queue
from conveyor.routing.entities import ExchangeType
from conveyor.routing.topology import BoundBinding
from conveyor.transports import open_transport
from conveyor.transports.storage import NewMessage, StaleTopology, Storage, StoredMessage, Writer
from conveyor.transports.virtual import VirtualTransport

MakeStorage = Callable[[], Awaitable[Storage]]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def transport_id(request: pytest.FixtureRequest) -> str:
    """The storage under test, by the id of the transport built on it (see conftest's
    ``broker_url``, which names a fresh broker for it)."""
    return str(request.param)


@pytest.fixture
async def make_storage(broker_url: str) -> AsyncIterator[MakeStorage]:
    """Factory: ``await make_storage()`` opens another handle on this test's broker."""
    made: list[Storage] = []

    async def make() -> Storage:
        transport = open_transport(broker_url)
        assert isinstance(transport, VirtualTransport)
        storage = transport._storage  # built from the URL exactly as the transport builds it
        await storage.open()
        made.append(storage)
        return storage

    yield make
    for storage in reversed(made):
        await storage.close()


@pytest.fixture
async def storage(make_storage: MakeStorage) -> Storage:
    """An open storage on a fresh broker."""
    return await make_storage()


def conn() -> str:
    """A new connection id."""
    return f"conn-{uuid.uuid4().hex}"


def new(
    queue: str,
    body: str,
    *,
    priority: int = 0,
    delay: float | None = None,
    ttl: float | None = None,
) -> NewMessage:
    """A copy of message ``body`` for ``queue``, routed by the default exchange."""
    now = time.time()
    not_before = now + delay if delay is not None else None
    expires_at = (not_before or now) + ttl if ttl is not None else None
    return NewMessage(
        queue=queue,
        envelope=Envelope(body=body.encode()),
        exchange="",
        routing_key=queue,
        priority=priority,
        not_before=not_before,
        expires_at=expires_at,
    )


def bodies(messages: Sequence[StoredMessage]) -> list[str]:
    return [m.envelope.body.decode() for m in messages]


async def declare(storage: Storage, *queues: Queue | str) -> int:
    """Add ``queues`` (a name is a plain queue); return the topology version after."""
    for q in queues:
        await storage.add_queue(Queue(q) if isinstance(q, str) else q)
    return await storage.topology_version()


async def put(storage: Storage, *messages: NewMessage, connection: str = "producer") -> None:
    """Enqueue ``messages`` at the current topology version, expecting no overflow."""
    version = await storage.topology_version()
    assert await storage.enqueue(messages, Writer(connection, version)) == []


async def take(storage: Storage, queue: str, connection: str, limit: int = 100) -> list[str]:
    """The bodies ``connection`` dequeues (and so leases) from ``queue``."""
    return bodies(await storage.dequeue([queue], connection=connection, limit=limit))


# The module's docstring: states, leases, order, tags.


async def test_a_delayed_message_is_ready_but_not_due_then_joins_the_tail(
    storage: Storage,
) -> None:
    """The module: "a delayed message is ready but not *due*; it takes its place at the tail
    of the queue when it becomes due"."""
    await declare(storage, "q")
    c = conn()
    await put(storage, new("q", "later", delay=0.5), new("q", "first"))
    assert (await storage.stats("q")).ready == 2
    assert await take(storage, "q", c) == ["first"]
    assert await take(storage, "q", c) == []
    await asyncio.sleep(0.55)
    await put(storage, new("q", "after"))
    assert await take(storage, "q", c) == ["later", "after"]


async def test_a_lapsed_lease_makes_the_message_ready_at_its_old_place_counting_one_more(
    make_storage: MakeStorage,
) -> None:
    """The module: a message is "leased ... until the connection's lease lapses (then it is
    ready again, at its old place, and its next delivery counts one more)"."""
    storage, other = await make_storage(), await make_storage()
    await declare(storage, "q")
    dying, alive = conn(), conn()
    await storage.renew(dying, lease=0.1)
    await other.renew(alive, lease=30)
    await put(storage, new("q", "a"), new("q", "b"))
    [first] = await storage.dequeue(["q"], connection=dying, limit=1)
    assert (first.envelope.body, first.delivery_count) == (b"a", 1)
    await asyncio.sleep(0.2)
    assert (await other.reap()).connections == (dying,)
    again = await other.dequeue(["q"], connection=alive, limit=10)
    assert [(m.envelope.body, m.delivery_count) for m in again] == [(b"a", 2), (b"b", 1)]


async def test_order_is_highest_priority_first_then_the_order_messages_became_due(
    storage: Storage,
) -> None:
    """The module: "Order within a queue: highest priority first, then the order in which messages
    became due"."""
    await declare(storage, Queue("q", max_priority=9))
    await put(
        storage,
        new("q", "low-1", priority=1),
        new("q", "high-1", priority=9),
        new("q", "delayed-high", priority=9, delay=0.2),
        new("q", "low-2", priority=1),
        new("q", "high-2", priority=9),
    )
    await asyncio.sleep(0.25)
    got = await take(storage, "q", conn())
    assert got == ["high-1", "high-2", "delayed-high", "low-1", "low-2"]


async def test_tags_are_never_reused(storage: Storage) -> None:
    """The module: "Tags are unique for the life of the storage and never reused"."""
    await declare(storage, "q1", "q2")
    c = conn()
    seen: set[object] = set()
    for _ in range(3):
        await put(storage, new("q1", "x"), new("q2", "y"))
        leased = await storage.dequeue(["q1", "q2"], connection=c, limit=10)
        tags = {m.tag for m in leased}
        assert len(tags) == 2
        assert not tags & seen
        seen |= tags
        assert await storage.ack([m.tag for m in leased], connection=c) == 2


# Storage: topology versions and enqueue's atomicity.


async def test_topology_writes_bump_the_version_and_load_topology_reports_it(
    storage: Storage,
) -> None:
    """``Storage``: "Topology writes bump a version number"; ``load_topology`` gives "the
    current topology, its version and the owners of exclusive queues"; ``topology_version``
    the same version."""
    versions = [await storage.topology_version()]
    await storage.add_exchange(Exchange("ex", ExchangeType.TOPIC))
    versions.append(await storage.topology_version())
    await storage.add_queue(Queue("q"))
    versions.append(await storage.topology_version())
    await storage.add_queue(Queue("mine", exclusive=True), owner="owner-conn")
    versions.append(await storage.topology_version())
    await storage.add_binding(BoundBinding("ex", "q", "a.#", {}))
    versions.append(await storage.topology_version())
    await storage.remove_binding(BoundBinding("ex", "q", "a.#", {}))
    versions.append(await storage.topology_version())
    await storage.remove_exchange("ex")
    versions.append(await storage.topology_version())
    await storage.remove_queue("q")
    versions.append(await storage.topology_version())
    assert versions == sorted(set(versions)), versions  # each write bumped it
    snap = await storage.load_topology()
    assert snap.version == versions[-1]
    assert set(snap.topology.queues) == {"mine"}
    assert "ex" not in snap.topology.exchanges
    assert dict(snap.owners) == {"mine": "owner-conn"}


async def test_enqueue_to_several_queues_is_all_or_nothing_against_the_topology_version(
    storage: Storage,
) -> None:
    """``enqueue``: "Raises StaleTopology (having changed nothing) if the topology version is
    no longer ``topology_version``" - not one copy lands, and nothing is settled."""
    c = conn()
    version = await declare(storage, "q1", "q2")
    await put(storage, new("q1", "held"))
    [held] = await storage.dequeue(["q1"], connection=c, limit=1)
    await storage.add_queue(Queue("q3"))
    with pytest.raises(StaleTopology):
        await storage.enqueue(
            [new("q1", "a"), new("q2", "b")],
            Writer(c, version),
            settle=[held.tag],
        )
    assert (await storage.stats("q1")).ready == 0
    assert (await storage.stats("q1")).unacked == 1
    assert (await storage.stats("q2")).ready == 0
    version = await storage.topology_version()
    await storage.enqueue([new("q1", "a"), new("q2", "b")], Writer(c, version), settle=[held.tag])
    assert [
        (s.ready, s.unacked) for s in [await storage.stats("q1"), await storage.stats("q2")]
    ] == [
        (1, 0),
        (1, 0),
    ]


async def test_enqueue_settles_only_what_the_connection_holds(storage: Storage) -> None:
    """``enqueue`` removes "the ``settle`` messages leased to ``connection``"."""
    mine, theirs = conn(), conn()
    await declare(storage, "q")
    await put(storage, new("q", "a"), new("q", "b"))
    [a] = await storage.dequeue(["q"], connection=mine, limit=1)
    [b] = await storage.dequeue(["q"], connection=theirs, limit=1)
    version = await storage.topology_version()
    await storage.enqueue([], Writer(mine, version), settle=[a.tag, b.tag])
    assert (await storage.stats("q")).unacked == 1
    assert await storage.ack([b.tag], connection=theirs) == 1


async def test_enqueue_pushes_the_head_out_of_a_full_queue_leased_to_the_caller(
    storage: Storage,
) -> None:
    """``enqueue``: "A queue with ``x-max-length`` N keeps at most N ready, due messages:
    those pushed out of its head are leased to ``connection`` and returned", keeping the
    delivery count they had."""
    c = conn()
    version = await declare(storage, Queue("q", queue_arguments={"x-max-length": 2}))
    assert (
        await storage.enqueue(
            [new("q", "a"), new("q", "b"), new("q", "later", delay=30)],
            Writer(c, version),
        )
        == []
    )  # a delayed message is not due: it does not count
    overflow = await storage.enqueue([new("q", "c"), new("q", "d")], Writer(c, version))
    assert bodies(overflow) == ["a", "b"]
    assert [m.delivery_count for m in overflow] == [0, 0]
    stats = await storage.stats("q")
    assert (stats.ready, stats.unacked) == (3, 2)
    assert await storage.ack([m.tag for m in overflow], connection=c) == 2
    assert await take(storage, "q", c) == ["c", "d"]


async def test_a_stored_message_comes_back_as_it_was_stored(storage: Storage) -> None:
    """What ``enqueue`` stores, ``dequeue`` returns: envelope, exchange, routing key,
    priority and expiry."""
    await declare(storage, Queue("q", max_priority=5))
    envelope = Envelope(
        body=b"\x00payload",
        headers={"task": "t", "nested": {"a": [1, 2.5, None, True]}},
        correlation_id="cid",
        reply_to="replies",
        priority=4,
        expiration=60.0,
        message_id="mid",
        timestamp=1700000000.5,
        type="kind",
        app_id="app",
    )
    expires_at = time.time() + 60
    message = NewMessage("q", envelope, "ex", "rk", priority=4, expires_at=expires_at)
    await put(storage, message)
    [got] = await storage.dequeue(["q"], connection=conn(), limit=1)
    assert got.envelope == envelope
    assert (got.queue, got.exchange, got.routing_key, got.priority) == ("q", "ex", "rk", 4)
    assert got.expires_at == pytest.approx(expires_at, abs=0.001)


# dequeue


async def test_dequeue_acks_then_leases_in_the_order_of_the_queues_given(
    storage: Storage,
) -> None:
    """``dequeue``: "Ack ``ack`` ..., then lease up to ``limit`` ready, due messages ...
    Takes from ``queues`` in the order given"; "Each message's delivery count grows by one"."""
    c = conn()
    await declare(storage, "q1", "q2")
    await put(storage, new("q1", "a1"), new("q1", "a2"), new("q2", "b1"), new("q2", "b2"))
    first = await storage.dequeue(["q2", "q1"], connection=c, limit=3)
    assert bodies(first) == ["b1", "b2", "a1"]
    assert {m.delivery_count for m in first} == {1}
    rest = await storage.dequeue(["q1", "q2"], connection=c, limit=3, ack=[m.tag for m in first])
    assert bodies(rest) == ["a2"]
    assert (await storage.stats("q1")).unacked == 1
    assert (await storage.stats("q2")).unacked == 0


async def test_dequeue_returns_expired_messages_like_any_other(storage: Storage) -> None:
    """``dequeue``: "Expired messages are returned like any other: the caller dead-letters
    them"."""
    await declare(storage, "q")
    await put(storage, new("q", "old", ttl=0.01))
    await asyncio.sleep(0.05)
    [got] = await storage.dequeue(["q"], connection=conn(), limit=1)
    assert got.envelope.body == b"old"
    assert got.expires_at is not None
    assert got.expires_at < time.time()


async def test_dequeue_marks_the_queues_used(storage: Storage) -> None:
    """``dequeue``: "the queues are marked used" (``activity``'s ``used_at``)."""
    await declare(storage, "q")
    before = (await storage.activity(["q"]))["q"].used_at
    await asyncio.sleep(0.05)
    await storage.dequeue(["q"], connection=conn(), limit=1)
    assert (await storage.activity(["q"]))["q"].used_at > before


# claim_expired


async def test_claim_expired_leases_lapsed_ttls_of_any_queue_keeping_their_count(
    storage: Storage,
) -> None:
    """``claim_expired``: "Lease up to ``limit`` ready messages of any queue whose
    ``expires_at`` has passed"; claimed messages "keep the count they had"."""
    c = conn()
    await declare(storage, "q1", "q2")
    await put(
        storage,
        new("q1", "dies-1", ttl=0.01),
        new("q1", "lives", ttl=60),
        new("q2", "dies-2", ttl=0.01),
        new("q2", "dies-3", ttl=0.01),
        new("q2", "no-ttl"),
    )
    [returned] = await storage.dequeue(["q2"], connection=c, limit=1)
    assert await storage.release([returned.tag], connection=c) == 1  # dies-2, counted once
    await asyncio.sleep(0.05)
    claimed = await storage.claim_expired(connection=c, limit=2)
    claimed += await storage.claim_expired(connection=c, limit=10)
    assert sorted(bodies(claimed)) == ["dies-1", "dies-2", "dies-3"]
    counts = {m.envelope.body: m.delivery_count for m in claimed}
    assert counts == {b"dies-1": 0, b"dies-2": 1, b"dies-3": 0}
    assert await storage.claim_expired(connection=c, limit=10) == []
    assert (await storage.stats("q2")).unacked == 2
    assert await storage.ack([m.tag for m in claimed], connection=c) == 3


async def test_claim_expired_leaves_leased_messages_alone(storage: Storage) -> None:
    """``claim_expired`` takes *ready* messages only."""
    c = conn()
    await declare(storage, "q")
    await put(storage, new("q", "held", ttl=0.01))
    await storage.dequeue(["q"], connection=c, limit=1)
    await asyncio.sleep(0.05)
    assert await storage.claim_expired(connection=conn(), limit=10) == []


# ack and release


async def test_ack_removes_only_what_the_connection_holds(storage: Storage) -> None:
    """``ack``: "Remove messages leased to ``connection``; return how many. Other tags are
    ignored"."""
    mine, theirs = conn(), conn()
    await declare(storage, "q")
    await put(storage, new("q", "a"), new("q", "b"), new("q", "c"))
    a, b = await storage.dequeue(["q"], connection=mine, limit=2)
    [c] = await storage.dequeue(["q"], connection=theirs, limit=1)
    assert await storage.ack([a.tag, c.tag], connection=mine) == 1
    assert await storage.ack([a.tag], connection=mine) == 0  # already acked
    stats = await storage.stats("q")
    assert (stats.ready, stats.unacked) == (0, 2)
    assert await storage.ack([b.tag], connection=mine) == 1
    assert await storage.ack([c.tag], connection=theirs) == 1


async def test_release_returns_messages_to_their_old_place(storage: Storage) -> None:
    """``release``: "Return messages leased to ``connection`` to ready at their old place
    ... Other tags are ignored; returns how many were released"."""
    mine, theirs = conn(), conn()
    await declare(storage, "q")
    await put(storage, new("q", "a"), new("q", "b"), new("q", "c"))
    a, b = await storage.dequeue(["q"], connection=mine, limit=2)
    assert await storage.release([b.tag, a.tag], connection=theirs) == 0
    assert await storage.release([b.tag, a.tag], connection=mine) == 2
    assert await storage.release([a.tag], connection=mine) == 0
    again = await storage.dequeue(["q"], connection=theirs, limit=10)
    assert [(m.envelope.body, m.delivery_count) for m in again] == [
        (b"a", 2),
        (b"b", 2),
        (b"c", 1),
    ]


# next_due, next_expiry, purge, stats


async def test_next_due_is_the_earliest_future_not_before_of_the_queues(storage: Storage) -> None:
    """``next_due``: "The earliest ``not_before`` still in the future among ready messages of
    ``queues``" (None when there is none)."""
    await declare(storage, "q1", "q2", "q3")
    start = time.time()
    await put(
        storage,
        new("q1", "in-2s", delay=2),
        new("q1", "in-1s", delay=1),
        new("q2", "in-half", delay=0.5),
        new("q2", "now"),
        new("q3", "soon", delay=0.05),
    )
    assert await storage.next_due(["q1"]) == pytest.approx(start + 1, abs=0.2)
    assert await storage.next_due(["q1", "q2"]) == pytest.approx(start + 0.5, abs=0.2)
    await asyncio.sleep(0.1)
    assert await storage.next_due(["q3"]) is None  # due by now: not in the future
    assert await storage.next_due(["missing"]) is None


async def test_next_expiry_is_the_earliest_expiry_among_ready_messages(storage: Storage) -> None:
    """``next_expiry``: "The earliest ``expires_at`` among ready messages of any queue, or
    None"."""
    c = conn()
    assert await storage.next_expiry() is None
    await declare(storage, "q1", "q2")
    start = time.time()
    await put(storage, new("q1", "first", ttl=1), new("q2", "second", ttl=2))
    assert await storage.next_expiry() == pytest.approx(start + 1, abs=0.2)
    await storage.dequeue(["q1"], connection=c, limit=1)
    assert await storage.next_expiry() == pytest.approx(start + 2, abs=0.2)
    await storage.dequeue(["q2"], connection=c, limit=1)
    assert await storage.next_expiry() is None


async def test_purge_removes_ready_messages_due_or_not(storage: Storage) -> None:
    """``purge``: "Remove the ready messages (due or not) of ``queue``; return how many"."""
    c = conn()
    await declare(storage, "q", "other")
    await put(storage, new("q", "held"), new("q", "a"), new("q", "later", delay=30))
    await put(storage, new("other", "kept"))
    [held] = await storage.dequeue(["q"], connection=c, limit=1)
    assert await storage.purge("q") == 2
    stats = await storage.stats("q")
    assert (stats.ready, stats.unacked) == (0, 1)
    assert (await storage.stats("other")).ready == 1
    assert await storage.ack([held.tag], connection=c) == 1


async def test_stats_count_ready_delayed_leased_and_live_consumers(
    storage: Storage,
) -> None:
    """``stats``: "Ready (including delayed), leased, and live-connection consumer counts"."""
    alive, dying = conn(), conn()
    await storage.renew(alive, lease=30)
    await storage.renew(dying, lease=30)
    await declare(storage, "q")
    await put(storage, new("q", "a"), new("q", "b"), new("q", "later", delay=30))
    await storage.dequeue(["q"], connection=alive, limit=1)
    await storage.add_consumer(alive, "c1", ["q"])
    await storage.add_consumer(dying, "c2", ["q"])
    stats = await storage.stats("q")
    assert (stats.name, stats.ready, stats.unacked, stats.consumers) == ("q", 2, 1, 2)
    await storage.renew(dying, lease=0.05)
    await asyncio.sleep(0.15)  # dying's lease lapsed, not reaped yet: its consumer is not live
    assert (await storage.stats("q")).consumers == 1


# connections and consumers


async def test_renew_says_whether_the_connection_had_been_reaped(
    make_storage: MakeStorage,
) -> None:
    """``renew``: "Returns False if the connection had been reaped (its leases and consumers
    are gone ...), True otherwise, including the first call"."""
    storage, other = await make_storage(), await make_storage()
    c = conn()
    await declare(storage, "q")
    assert await storage.renew(c, lease=0.1) is True
    assert await storage.renew(c, lease=0.1) is True
    await storage.add_consumer(c, "tag", ["q"])
    await put(storage, new("q", "a"))
    await storage.dequeue(["q"], connection=c, limit=1)
    await asyncio.sleep(0.2)
    assert (await other.reap()).connections == (c,)
    assert await storage.renew(c, lease=30) is False
    stats = await storage.stats("q")
    assert (stats.ready, stats.unacked, stats.consumers) == (1, 0, 0)
    assert await storage.renew(c, lease=30) is True


async def test_disconnect_gives_leases_back_and_drops_consumers(storage: Storage) -> None:
    """``disconnect``: "its leased messages return to ready, its consumers go. Returns the
    queues that had consumers and now have none. Idempotent"."""
    c, other = conn(), conn()
    for connection in (c, other):
        await storage.renew(connection, lease=30)
    await declare(storage, "q1", "q2", "q3")
    await put(storage, new("q1", "a"))
    await storage.dequeue(["q1"], connection=c, limit=1)
    await storage.add_consumer(c, "t1", ["q1", "q2"])
    await storage.add_consumer(c, "t2", ["q3"])
    await storage.add_consumer(other, "t3", ["q2"])
    assert sorted(await storage.disconnect(c)) == ["q1", "q3"]
    stats = await storage.stats("q1")
    assert (stats.ready, stats.unacked, stats.consumers) == (1, 0, 0)
    assert (await storage.stats("q2")).consumers == 1
    assert await storage.disconnect(c) == []


async def test_reap_disconnects_the_connections_whose_lease_lapsed(
    make_storage: MakeStorage,
) -> None:
    """``reap``: "Disconnect every connection whose lease has lapsed"; ``Reaped`` names them
    and the "queues that had consumers and now have none because of it"."""
    storage, other = await make_storage(), await make_storage()
    dying, alive = conn(), conn()
    await storage.renew(dying, lease=30)
    await other.renew(alive, lease=30)
    await declare(storage, "lonely", "shared")
    await storage.add_consumer(dying, "t1", ["lonely", "shared"])
    await other.add_consumer(alive, "t2", ["shared"])
    await put(storage, new("lonely", "a"))
    await storage.dequeue(["lonely"], connection=dying, limit=1)
    assert (await other.reap()).connections == ()
    await storage.renew(dying, lease=0.05)
    await asyncio.sleep(0.15)
    reaped = await other.reap()
    assert reaped.connections == (dying,)
    assert reaped.idle_queues == ("lonely",)
    stats = await other.stats("lonely")
    assert (stats.ready, stats.unacked, stats.consumers) == (1, 0, 0)
    assert (await other.stats("shared")).consumers == 1
    assert (await other.reap()).connections == ()


async def test_consumers_are_counted_and_removing_one_names_the_queues_it_left_idle(
    storage: Storage,
) -> None:
    """``add_consumer``: "Record consumer ``tag`` ... (counted in stats)"; ``remove_consumer``:
    "Forget consumer ``tag``; return the queues left without consumers by it"."""
    c = conn()
    await storage.renew(c, lease=30)
    await declare(storage, "q1", "q2")
    await storage.add_consumer(c, "t1", ["q1", "q2"])
    await storage.add_consumer(c, "t2", ["q2"])
    assert [(await storage.stats(q)).consumers for q in ("q1", "q2")] == [1, 2]
    assert await storage.remove_consumer(c, "t1") == ["q1"]
    assert await storage.remove_consumer(c, "t1") == []
    assert await storage.remove_consumer(c, "t2") == ["q2"]
    assert [(await storage.stats(q)).consumers for q in ("q1", "q2")] == [0, 0]


async def test_activity_reports_last_use_and_live_consumers_of_existing_queues(
    storage: Storage,
) -> None:
    """``activity``: "Last use and live consumer count of each existing queue in
    ``queues``"; a queue is used when "declared, read from, or a consumer left"."""
    c = conn()
    await storage.renew(c, lease=30)
    before = time.time()
    await declare(storage, "q")
    declared = await storage.activity(["q", "missing"])
    assert set(declared) == {"q"}
    assert declared["q"].used_at >= before - 0.01
    assert declared["q"].consumers == 0
    await storage.add_consumer(c, "t", ["q"])
    assert (await storage.activity(["q"]))["q"].consumers == 1
    await asyncio.sleep(0.05)
    await storage.remove_consumer(c, "t")
    left = (await storage.activity(["q"]))["q"]
    assert left.consumers == 0
    assert left.used_at > declared["q"].used_at
    await asyncio.sleep(0.05)
    await storage.add_queue(Queue("q"))
    assert (await storage.activity(["q"]))["q"].used_at > left.used_at


# topology records


async def test_add_exchange_and_add_queue_keep_what_exists(storage: Storage) -> None:
    """``add_exchange``: "Store ``exchange`` unless one of that name exists; return the stored
    definition"; ``add_queue`` likewise, returning the stored owner too."""
    first = Exchange("ex", ExchangeType.DIRECT)
    assert await storage.add_exchange(first) == first
    assert await storage.add_exchange(Exchange("ex", ExchangeType.FANOUT)) == first
    queue = Queue("q", exclusive=True, queue_arguments={"x-max-length": 3})
    assert await storage.add_queue(queue, owner="a") == (queue, "a")
    assert await storage.add_queue(Queue("q"), owner="b") == (queue, "a")
    assert await storage.add_queue(Queue("plain")) == (Queue("plain"), None)


async def test_removing_topology_records(storage: Storage) -> None:
    """``remove_exchange`` removes "every binding from it (no-op if absent)"; ``remove_queue``
    removes "its bindings, consumers and messages" and returns how many were ready ("Removing
    a missing queue returns 0");
    ``add_binding``/``remove_binding`` are no-ops when present/absent."""
    c = conn()
    await storage.renew(c, lease=30)
    await storage.add_exchange(Exchange("ex", ExchangeType.TOPIC))
    await storage.add_exchange(Exchange("other", ExchangeType.FANOUT))
    await declare(storage, "q1", "q2")
    for bound in (BoundBinding("ex", "q1", "a.*", {}), BoundBinding("other", "q2", "", {})):
        await storage.add_binding(bound)
        version = await storage.topology_version()
        await storage.add_binding(bound)
        assert await storage.topology_version() == version
    await storage.remove_binding(BoundBinding("ex", "q1", "nope", {}))
    await storage.remove_exchange("ex")
    await storage.remove_exchange("ex")
    await storage.add_consumer(c, "t", ["q2"])
    await put(storage, new("q2", "held"), new("q2", "a"), new("q2", "later", delay=30))
    [held] = await storage.dequeue(["q2"], connection=c, limit=1)
    assert await storage.remove_queue("q2") == 2  # the ready ones, delayed included
    assert await storage.remove_queue("q2") == 0
    assert await storage.ack([held.tag], connection=c) == 0  # gone with its queue
    snap = await storage.load_topology()
    assert list(snap.topology.bindings) == []
    assert set(snap.topology.queues) == {"q1"}
    assert (await storage.stats("q2")).consumers == 0


# listen


async def test_a_listener_keeps_a_wake_up_that_arrives_while_nobody_waits(
    make_storage: MakeStorage,
) -> None:
    """``Listener``: "A wake-up that arrives while nobody waits is kept"; ``wait`` returns
    "True at once if woken since the last wait, else when woken (True) or after ``timeout``
    seconds (False)"."""
    storage, producer = await make_storage(), await make_storage()
    c = conn()
    await declare(storage, "q")
    listener = await storage.listen(["q"])
    try:
        await put(producer, new("q", "a"))
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(listener.wait(5), 1) is True
        assert await take(storage, "q", c) == ["a"]
        started = time.monotonic()
        assert await listener.wait(0.1) is False
        assert time.monotonic() - started >= 0.09
        waiting = asyncio.ensure_future(listener.wait(5))
        await asyncio.sleep(0.05)
        await put(producer, new("q", "b"))
        assert await asyncio.wait_for(waiting, 2) is True
    finally:
        await listener.close()


async def test_listeners_wake_when_a_message_becomes_ready_or_the_queue_goes(
    make_storage: MakeStorage,
) -> None:
    """``listen``: wake-ups for "a message became ready (published, released, returned from a
    lapsed lease) or the topology changed under them"."""
    storage, other = await make_storage(), await make_storage()
    holder = conn()
    await storage.renew(holder, lease=0.2)
    await declare(storage, "q")
    await put(storage, new("q", "a"))
    [a] = await storage.dequeue(["q"], connection=holder, limit=1)
    listener = await other.listen(["q"])

    async def woken() -> bool:
        return await asyncio.wait_for(listener.wait(2), 3)

    try:
        await listener.wait(0.05)  # drop any wake-up from before
        assert await storage.release([a.tag], connection=holder) == 1
        assert await woken()
        await storage.dequeue(["q"], connection=holder, limit=1)
        await asyncio.sleep(0.3)
        assert (await other.reap()).connections == (holder,)
        assert await woken()
        await other.remove_queue("q")
        assert await woken()
    finally:
        await listener.close()


async def test_closing_a_listener_ends_a_pending_wait(storage: Storage) -> None:
    """``Listener.close``: "Stop listening (idempotent); a pending :meth:`wait` returns at
    once"."""
    await declare(storage, "q")
    listener = await storage.listen(["q"])
    waiting = asyncio.ensure_future(listener.wait(30))
    await asyncio.sleep(0.05)
    await listener.close()
    await asyncio.wait_for(waiting, 1)
    await listener.close()


# open, close, concurrency


async def test_open_is_idempotent_and_close_keeps_leases(make_storage: MakeStorage) -> None:
    """``open``: "(idempotent)"; ``close``: "Leases are not released here"."""
    storage = await make_storage()
    await storage.open()
    c = conn()
    await storage.renew(c, lease=30)
    await declare(storage, "q")
    await put(storage, new("q", "a"))
    await storage.dequeue(["q"], connection=c, limit=1)
    await storage.close()
    await storage.close()
    other = await make_storage()
    stats = await other.stats("q")
    assert (stats.ready, stats.unacked) == (0, 1)


async def test_connections_dequeueing_at_once_never_share_a_message(
    make_storage: MakeStorage,
) -> None:
    """``Storage``: every method "is safe to call from several connections ... at once": two
    handles leasing one queue concurrently never lease one message twice."""
    storages = [await make_storage() for _ in range(2)]
    await declare(storages[0], "q")
    await put(storages[0], *(new("q", f"m{i}") for i in range(200)))

    async def drain(storage: Storage) -> list[str]:
        c = conn()
        got: list[str] = []
        while batch := await storage.dequeue(["q"], connection=c, limit=7):
            got += bodies(batch)
            await asyncio.sleep(0)
        return got

    first, second = await asyncio.gather(*(drain(s) for s in storages))
    assert sorted(first + second) == sorted(f"m{i}" for i in range(200))
