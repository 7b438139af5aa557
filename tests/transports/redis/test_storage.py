"""Redis-specific behaviour beyond the conformance suite: URLs, foreign data, exact priorities,
retries after a lost reply, a killed connection (``CLIENT KILL``) and killed processes."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.exceptions

from conveyor import Envelope, Queue
from conveyor.errors import BrokerUnavailable, ConfigurationError
from conveyor.transports import Delivery, Outgoing, open_transport
from conveyor.transports.redis import RedisStorage, RedisTransport, lua
from conveyor.transports.storage import NewMessage, StaleTopology, Writer
from tests.conftest import kill_redis_clients, redis_namespace
from tests.transports.helpers import bodies, drain, env, take
from tests.transports.multiprocess import (
    a_killed_consumers_messages_come_back_redelivered,
    a_sigkill_loses_nothing,
    lines,
    unacked,
)


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    """A redis:// URL with a key prefix of its own (keys deleted after the test)."""
    return redis_namespace(request)


def _prefix(url: str) -> str:
    return url.split("key_prefix=", 1)[1]


@pytest.mark.parametrize(
    ("bad_url", "fragment"),
    [
        ("redis://127.0.0.1:6379/0?lease=soon", "lease"),
        ("redis://127.0.0.1:6379/0?visibility_timeout=5", "visibility_timeout"),
        ("redis://127.0.0.1:6379/notanumber", "Redis URL"),
        ("amqp://127.0.0.1/", "not a Redis URL"),
    ],
)
def test_bad_urls_and_options_are_configuration_errors(bad_url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        RedisTransport.from_url(bad_url)


async def test_an_unreachable_server_is_broker_unavailable_at_once() -> None:
    transport = open_transport("redis://127.0.0.1:1/0")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1"):
        await transport.connect()
    assert time.monotonic() - started < 5


async def test_foreign_keys_and_other_schemas_are_refused_untouched(
    url: str, sync_redis: redis.Redis
) -> None:
    prefix = _prefix(url)
    sync_redis.hset(f"{prefix}schema", "owner", "someone else")
    with pytest.raises(ConfigurationError, match="another program"):
        await open_transport(url).connect()
    assert sync_redis.hgetall(f"{prefix}schema") == {b"owner": b"someone else"}
    sync_redis.delete(f"{prefix}schema")
    sync_redis.set(f"{prefix}schema", "99")
    with pytest.raises(ConfigurationError, match="schema"):
        await open_transport(url).connect()
    assert sync_redis.get(f"{prefix}schema") == b"99"


async def test_every_key_is_under_the_prefix(url: str, sync_redis: redis.Redis) -> None:
    queue = f"q-{uuid.uuid4().hex}"
    async with open_transport(url) as t:
        await t.declare_queue(Queue(queue, max_priority=3))
        await t.publish(env("x", priority=2), routing_key=queue)
        await t.publish(env("later"), routing_key=queue, delay=30)
        consumer = await t.consume([queue])
        [delivery] = await take(consumer, 1)
        ours = [k.decode() for k in sync_redis.scan_iter(match=f"*{queue}*", count=1000)]
        assert ours
        assert all(k.startswith(_prefix(url)) for k in ours)
        await t.ack(delivery)
        await consumer.cancel()


async def test_all_256_priorities_are_exact_and_fifo_within_a_level(
    url: str, sync_redis: redis.Redis
) -> None:
    # Start the sequence high, where a careless score would lose precision in a double.
    sync_redis.set(f"{_prefix(url)}seq", 2**44)
    rng = random.Random(7)
    priorities = [rng.randrange(256) for _ in range(600)]
    async with open_transport(url) as t:
        await t.declare_queue(Queue("prio", max_priority=255))
        await t.publish_many(
            [
                Outgoing(env(str(i), priority=p), routing_key="prio")
                for i, p in enumerate(priorities)
            ]
        )
        got = [int(b) for b in bodies(await drain(t, "prio"))]
    assert got == sorted(range(600), key=lambda i: (-priorities[i], i))


async def test_a_stale_topology_version_stores_nothing(url: str) -> None:
    storage = RedisStorage(url.split("?")[0], key_prefix=_prefix(url))
    await storage.open()
    try:
        await storage.add_queue(Queue("a"))
        version = await storage.topology_version()
        await storage.add_queue(Queue("b"))
        copies = [
            NewMessage(queue=q, envelope=Envelope(body=b"x"), exchange="", routing_key=q)
            for q in ("a", "b")
        ]
        with pytest.raises(StaleTopology):
            await storage.enqueue(copies, Writer("c", version))
        assert (await storage.stats("a")).ready == 0
        assert (await storage.stats("b")).ready == 0
        await storage.enqueue(copies, Writer("c", await storage.topology_version()))
        assert (await storage.stats("a")).ready == (await storage.stats("b")).ready == 1
    finally:
        await storage.close()


def _lose_first_reply(storage: RedisStorage, name: str) -> list[int]:
    """Make script ``name`` run in Redis but lose its reply, once; return the call counter."""
    link = storage.link
    real = link.run_script
    source = lua.script(name)
    calls = [0]

    async def flaky(script: str, args: Sequence[Any]) -> Any:
        if script != source:
            return await real(script, args)
        calls[0] += 1
        reply = await real(script, args)
        if calls[0] == 1:
            raise redis.exceptions.ConnectionError("reply lost on the way back")
        return reply

    link.run_script = flaky  # type: ignore[method-assign]
    return calls


async def test_a_publish_whose_reply_was_lost_is_stored_once(url: str) -> None:
    async with open_transport(url) as t:
        assert isinstance(t, RedisTransport)
        await t.declare_queue(Queue("once"))
        calls = _lose_first_reply(t._storage, "enqueue")  # type: ignore[arg-type]
        assert await t.publish(env("only"), routing_key="once") == 1
        assert calls[0] == 2
        assert bodies(await drain(t, "once")) == ["only"]


async def test_a_fetch_whose_reply_was_lost_is_replayed_not_leased_twice(url: str) -> None:
    async with open_transport(url) as t:
        assert isinstance(t, RedisTransport)
        await t.declare_queue(Queue("replay"))
        await t.publish_many([Outgoing(env(str(i)), routing_key="replay") for i in range(3)])
        calls = _lose_first_reply(t._storage, "dequeue")  # type: ignore[arg-type]
        consumer = await t.consume(["replay"], prefetch=3)
        got = await take(consumer, 3)
        assert calls[0] >= 2
        assert sorted(bodies(got)) == ["0", "1", "2"]
        assert all(d.delivery_count == 1 for d in got)
        assert (await t.queue_stats("replay")).unacked == 3
        await t.ack_many(got)
        assert (await t.queue_stats("replay")).unacked == 0
        await consumer.cancel()


async def test_healthy_consumers_never_see_a_message_twice(url: str) -> None:
    async with open_transport(url) as producer, open_transport(url) as a, open_transport(url) as b:
        await producer.declare_queue(Queue("shared"))
        seen: list[Delivery] = []
        all_seen = asyncio.Event()

        async def work(transport: Any) -> None:
            consumer = await transport.consume(["shared"], prefetch=16)
            async for delivery in consumer:
                seen.append(delivery)
                await transport.ack(delivery)
                if len(seen) >= 400:
                    all_seen.set()

        workers = [asyncio.create_task(work(a)), asyncio.create_task(work(b))]
        await producer.publish_many(
            [Outgoing(env(str(i)), routing_key="shared") for i in range(400)]
        )
        await asyncio.wait_for(all_seen.wait(), 20)
        await asyncio.sleep(0.2)
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    assert sorted(int(b) for b in bodies(seen)) == list(range(400))
    assert not any(d.redelivered for d in seen)


async def test_consumers_survive_client_kill(url: str, sync_redis: redis.Redis) -> None:
    name = f"conveyor-kill-{uuid.uuid4().hex[:8]}"
    async with open_transport(url) as producer, open_transport(f"{url}&client_name={name}") as t:
        await producer.declare_queue(Queue("survive"))
        consumer = await t.consume(["survive"], prefetch=10)
        got: list[str] = []

        async def work() -> None:
            async for delivery in consumer:
                got.append(delivery.envelope.body.decode())
                await t.ack(delivery)

        worker = asyncio.create_task(work())
        await producer.publish_many(
            [Outgoing(env(f"a{i}"), routing_key="survive") for i in range(5)]
        )
        deadline = time.monotonic() + 10
        while len(got) < 5:
            assert time.monotonic() < deadline, "the consumer never started"
            await asyncio.sleep(0.01)

        killed = kill_redis_clients(sync_redis, name)
        assert killed >= 2, "expected the command and subscriber connections to be killed"

        await producer.publish_many(
            [Outgoing(env(f"b{i}"), routing_key="survive") for i in range(5)]
        )
        await t.publish(env("from-the-killed-side"), routing_key="survive")
        deadline = time.monotonic() + 15
        while len(got) < 11:
            assert not worker.done(), "the consumer stopped after its connection was killed"
            assert time.monotonic() < deadline, f"only {got} arrived after CLIENT KILL"
            await asyncio.sleep(0.02)
        assert sorted(got) == sorted(
            [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)] + ["from-the-killed-side"]
        )
        assert [c for c in sync_redis.client_list() if c.get("name") == name]
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await consumer.cancel()


async def test_a_killed_consumers_messages_come_back_redelivered(
    url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    await a_killed_consumers_messages_come_back_redelivered(url, tmp_path, processes)


async def test_processes_share_redis_and_a_sigkill_loses_nothing(
    url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    await a_sigkill_loses_nothing(
        url,
        tmp_path,
        processes,
        victim=("consume", "1.0"),
        victim_busy=_acking_and_holding,
    )


def _acking_and_holding(logs: Path) -> bool:
    """The victim has acked 40 and holds 3 or more it has not begun to ack. It takes a
    millisecond a delivery and acks ten at a time, so it still holds them when SIGKILL lands
    a moment later (killed right after an ack, it would hold nothing and prove nothing)."""
    if len(lines(logs / "victim.acked")) < 40:
        return False
    return len(unacked(logs, "victim")) >= 3
