"""``conveyor queues``, ``purge`` and ``dead-letters`` on SQLite, Redis and RabbitMQ, run as a
user runs them, against queues filled and workers run in the test's own process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pexpect
import pytest

from conveyor.app import App
from conveyor.errors import NotFound
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, Queue
from conveyor.task import Task
from conveyor.transports import Transport, open_transport
from conveyor.worker import Worker
from tests.cli.conftest import cli_env, conveyor
from tests.worker.helpers import ROOT


@dataclass
class Ops:
    """An app module the commands load with ``-A``, its names, and a transport to look with."""

    module: str
    env: dict[str, str]
    orders: str
    media: str
    media_exchange: str
    dead: str
    transport: Transport

    async def run(self, *args: str, input: str | None = None) -> Any:
        return await asyncio.to_thread(
            conveyor, "-A", self.module, *args, env=self.env, input=input
        )

    async def fill(self, queue: str, *bodies: str) -> None:
        for body in bodies:
            await self.transport.publish(Envelope(body.encode()), routing_key=queue)

    async def ready(self, queue: str) -> int:
        return (await self.transport.queue_stats(queue)).ready

    async def wait_ready(self, queue: str, count: int) -> None:
        """Wait (up to 5 s) until ``queue`` exists and holds ``count`` ready messages."""
        for _ in range(250):
            with contextlib.suppress(NotFound):
                if await self.ready(queue) == count:
                    return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{queue!r} never held {count} ready message(s)")


@pytest.fixture
async def ops(
    broker_url: str, tmp_path: Path, names: Callable[[str], str], forget: list[str]
) -> AsyncIterator[Ops]:
    orders, media, media_x, dead = names("orders"), names("media"), names("mediax"), names("dlq")
    forget += [orders, media, media_x, dead]
    module = f"ops_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from conveyor import App, Exchange, Queue\n"
        f"app = App('ops', config={{\n"
        f"    'task_queues': [Queue({orders!r}, max_priority=10),\n"
        f"                    Queue({media!r}, Exchange({media_x!r}, 'topic'), 'media.#')],\n"
        f"    'task_default_queue': {orders!r},\n"
        f"    'task_dead_letter_queue': {dead!r},\n"
        "})\n"
    )
    transport = open_transport(broker_url)
    await transport.connect()
    yield Ops(module, cli_env(broker_url, tmp_path), orders, media, media_x, dead, transport)
    await transport.close()


async def test_queues_shows_counts_bindings_and_arguments(ops: Ops) -> None:
    await ops.transport.declare_queue(Queue(ops.orders, max_priority=10))
    await ops.transport.declare_queue(Queue(ops.dead))
    await ops.fill(ops.orders, "a", "b", "c")
    held = await ops.transport.get(ops.orders)
    assert held is not None
    out = await ops.run("queues", "--json")
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    unacked = None if ops.transport.capabilities.native_exchanges else 1
    assert rows[ops.orders] == {
        "kind": "queue",
        "name": ops.orders,
        "exists": True,
        "ready": 2,
        "unacked": unacked,
        "consumers": 0,
        "bindings": [f"{ops.orders} -> {ops.orders!r}"],  # task_default_queue names the exchange
        "arguments": {"x-max-priority": 10},
    }
    assert rows[ops.media]["exists"] is False
    assert rows[ops.media]["bindings"] == [f"{ops.media_exchange} -> 'media.#'"]
    assert rows[ops.dead]["ready"] == 0
    table = await ops.run("queues")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    orders_line = next(line for line in lines if line.strip().startswith(ops.orders))
    assert orders_line.split()[1:4] == ["2", "1" if unacked else "?", "0"]
    assert "x-max-priority=10" in orders_line
    assert any(line.strip().startswith(f"{ops.media} *") for line in lines)
    assert "*: not declared on the broker yet" in table.stdout
    await ops.transport.ack(held)


async def test_queues_watch_refreshes_in_place(ops: Ops) -> None:
    await ops.transport.declare_queue(Queue(ops.orders, max_priority=10))
    watch = ("-A", ops.module, "queues", "--watch", "--interval", "0.2")
    child = pexpect.spawn(
        sys.executable,
        ["-c", "from conveyor.cli.main import main; main()", *watch],
        env=ops.env,
        cwd=str(ROOT),
        dimensions=(30, 200),
        encoding="utf-8",
        timeout=15,
    )
    try:
        await asyncio.to_thread(child.expect, rf"{ops.orders}\s+0\s")
        await ops.fill(ops.orders, "a", "b")
        await asyncio.to_thread(child.expect, rf"{ops.orders}\s+2\s")
        child.sendcontrol("c")
        await asyncio.to_thread(child.expect, pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


async def test_purge_asks_then_says_what_went(ops: Ops) -> None:
    await ops.transport.declare_queue(Queue(ops.orders, max_priority=10))
    await ops.transport.declare_queue(Queue(ops.dead))
    await ops.fill(ops.orders, "a", "b", "c")
    await ops.fill(ops.dead, "kept")
    declined = await ops.run("purge", input="n\n")
    assert declined.returncode == 0
    assert f"Purge {ops.orders} (3 ready) on " in declined.stdout
    assert f"{ops.media}: not declared on the broker yet" in declined.stdout
    assert "nothing purged" in declined.stdout
    assert await ops.ready(ops.orders) == 3
    accepted = await ops.run("purge", input="y\n")
    assert f"{ops.orders}: 3 messages removed" in accepted.stdout
    assert await ops.ready(ops.orders) == 0
    assert await ops.ready(ops.dead) == 1  # the dead letters only go when named
    await ops.fill(ops.orders, "d")
    forced = await ops.run("purge", "-f", "-Q", f"{ops.orders},{ops.dead}")
    assert forced.returncode == 0
    assert forced.stdout.splitlines() == [
        f"{ops.orders}: 1 message removed",
        f"{ops.dead}: 1 message removed",
    ]
    missing = await ops.run("purge", "-f", "-Q", f"{ops.orders},no-such-queue-{uuid.uuid4().hex}")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    assert f"{ops.orders}: 0 messages removed" in missing.stdout
    aborted = await ops.run("purge")  # no answer on standard input: nothing happens
    assert aborted.returncode == 1
    assert "Aborted" in aborted.stderr


async def _dead_letter_two(ops: Ops, broker_url: str) -> list[str]:
    """Send remote.transcode twice to a worker that does not know it; return the task ids."""
    config = {
        "task_queues": [Queue(ops.orders, max_priority=10)],
        "task_dead_letter_queue": ops.dead,
    }
    backend = f"memory://ops-{uuid.uuid4().hex}"
    unaware = App("unaware", broker=broker_url, result_backend=backend, config=config)
    worker = Worker(unaware, queues=[ops.orders], hostname="unaware@test", concurrency=2)
    await worker.start()
    try:
        ids = []
        for path in ("a.mp4", "b.mp4"):
            result = await unaware.asend_task(
                "remote.transcode", kwargs={"path": path}, queue=ops.orders
            )
            ids.append(result.id)
        await ops.wait_ready(ops.dead, 2)
    finally:
        await worker.stop()
        await unaware.aclose()
    return ids


async def test_dead_letters_listed_shown_dropped_and_replayed_to_a_worker_that_knows_the_task(
    ops: Ops, broker_url: str
) -> None:
    before = time.time()
    first, second = await _dead_letter_two(ops, broker_url)
    listed = await ops.run("dead-letters", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)
    assert [letter["id"] for letter in letters] == [first, second]
    for letter in letters:
        assert letter["task"] == "remote.transcode"
        assert letter["queue"] == ops.orders
        assert letter["reason"] == "unknown task 'remote.transcode': not registered on this worker"
        assert letter["worker"] == "unaware@test"
        assert letter["routing_key"] == ops.orders
        assert before <= datetime.fromisoformat(letter["time"]).timestamp() <= time.time()
    table = await ops.run("dead-letters", "list")
    assert f"{first}  remote.transcode  {ops.orders}" in " ".join(table.stdout.split("  "))
    assert "2 dead letter(s)" in table.stdout
    # Listing twice kept every message, in order.
    again = json.loads((await ops.run("dead-letters", "list", "--json")).stdout)
    assert [letter["id"] for letter in again] == [first, second]
    assert await ops.ready(ops.dead) == 2

    shown = await ops.run("dead-letters", "show", second)
    details = json.loads(shown.stdout)
    assert details["body"][1] == {"path": "b.mp4"}
    assert details["headers"]["x-conveyor-worker"] == "unaware@test"
    dropped = await ops.run("dead-letters", "drop", second)
    assert dropped.stdout == f"dropped {second}\n"
    assert await ops.ready(ops.dead) == 1

    ran: list[dict[str, Any]] = []
    config = {
        "task_queues": [Queue(ops.orders, max_priority=10)],
        "task_dead_letter_queue": ops.dead,
    }
    aware = App("aware", broker=broker_url, result_backend="memory://", config=config)

    @aware.task(name="remote.transcode", bind=True)
    def transcode(self: Task, path: str) -> str:
        ran.append({"path": path, "headers": dict(self.request.headers or {})})
        return path.upper()

    worker = Worker(aware, queues=[ops.orders], hostname="aware@test", concurrency=2)
    await worker.start()
    try:
        replayed = await ops.run("dead-letters", "replay", "--all", "--task", "remote.transcode")
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout.startswith(f"replayed {first} (remote.transcode) to exchange ")
        for _ in range(250):
            if ran:
                break
            await asyncio.sleep(0.02)
    finally:
        await worker.stop()
        await aware.aclose()
    assert [r["path"] for r in ran] == ["a.mp4"]
    assert not [h for h in ran[0]["headers"] if h.startswith(("x-conveyor", "x-death"))]
    assert await ops.ready(ops.dead) == 0
    none_left = await ops.run("dead-letters", "replay", "--all")
    assert "no dead letters to act on" in none_left.stdout


async def test_a_replay_that_reaches_no_queue_keeps_the_dead_letter(ops: Ops) -> None:
    await ops.transport.declare_queue(Queue(ops.dead))
    nowhere = f"gone-{uuid.uuid4().hex}"
    headers = {
        "id": "lost-1",
        "task": "remote.transcode",
        "x-conveyor-dead-letter-reason": "unknown task",
        "x-conveyor-worker": "w@test",
        "x-conveyor-queue": nowhere,
        "x-conveyor-original-exchange": "",
        "x-conveyor-original-routing-key": nowhere,
    }
    await ops.transport.publish(Envelope(b"[[], {}, {}]", headers=headers), routing_key=ops.dead)
    out = await ops.run("dead-letters", "replay", "lost-1", "unknown-id")
    assert out.returncode == 1
    assert "unknown-id: no such dead letter" in out.stderr
    assert f"lost-1: kept in {ops.dead!r}" in out.stderr
    assert await ops.ready(ops.dead) == 1
    usage = await ops.run("dead-letters", "replay")
    assert usage.returncode == 2
    assert "give --all or --task NAME" in usage.stderr


async def test_broker_dead_letters_come_with_x_death(ops: Ops) -> None:
    """A message the broker dead-letters (rejected) lists with RabbitMQ's x-death fields and
    replays to the exchange and routing key it was first published with."""
    await ops.transport.declare_exchange(Exchange(ops.media_exchange, "topic"))
    source = Queue(
        ops.media,
        Exchange(ops.media_exchange, "topic"),
        "media.#",
        queue_arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": ops.dead},
    )
    await ops.transport.declare_queue(Queue(ops.dead))
    await ops.transport.declare_queue(source)
    envelope = Envelope(b"{}", headers={"id": "rejected-1", "task": "media.resize"})
    await ops.transport.publish(envelope, exchange=ops.media_exchange, routing_key="media.image")
    delivery = await ops.transport.get(ops.media)
    assert delivery is not None
    await ops.transport.reject(delivery)
    await ops.wait_ready(ops.dead, 1)
    out = await ops.run("dead-letters", "list", "--json")
    [letter] = json.loads(out.stdout)
    assert letter["id"] == "rejected-1"
    assert (letter["queue"], letter["reason"]) == (ops.media, "rejected")
    assert (letter["exchange"], letter["routing_key"]) == (ops.media_exchange, "media.image")
    assert letter["time"] is not None
    replayed = await ops.run("dead-letters", "replay", "rejected-1")
    assert replayed.returncode == 0, replayed.stderr
    back = await ops.transport.get(ops.media, no_ack=True)
    assert back is not None
    assert not [h for h in back.envelope.headers if h.startswith(("x-death", "x-first-death"))]
