"""Poison messages never stall a worker (issue 15, item 1), on every broker.

A worker with ``-c 1`` (prefetch 4) is given more poison messages than its prefetch, then good
tasks behind them: the good tasks run, and each poison message is dead-lettered (acked, so it
frees its prefetch slot) with a reason naming what is wrong with it. memory:// runs the worker in
this process (the broker lives in one process); the others run ``conveyor worker`` processes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from conveyor.app import App
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Queue
from conveyor.transports.base import Transport
from conveyor.worker import Worker
from tests.conftest import redis_namespace
from tests.worker import poison_app
from tests.worker.helpers import ROOT, WorkerProcess, worker_env

_NO_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_V2_BODY = orjson.dumps([[], {}, _NO_EMBED])


def _v2(task_id: str, **headers: object) -> Envelope:
    return Envelope(body=_V2_BODY, headers={"task": "poison.record", "id": task_id, **headers})


# task id -> (the poison message, words its dead-letter reason must contain)
POISON: dict[str, tuple[Envelope, str]] = {
    "eta-1e20": (_v2("eta-1e20", eta=1e20), "'eta' is not a time"),
    "expires-1e15": (_v2("expires-1e15", expires=-1e15), "'expires' is not a time"),
    "v1-args-5": (
        Envelope(body=orjson.dumps({"task": "poison.record", "id": "v1-args-5", "args": 5})),
        "args must be a list",
    ),
    "not-json": (
        Envelope(body=b"[[], {", headers={"task": "poison.record", "id": "not-json"}),
        "not valid JSON",
    ),
    "pickle": (
        Envelope(
            body=b"\x80\x04K\x01.",
            headers={"task": "poison.record", "id": "pickle"},
            content_type="application/x-python-serialize",
        ),
        "refusing a pickle message",
    ),
    "retries-2**40": (_v2("retries-2**40", retries=2**40), "retries must be an integer"),
}


@pytest.fixture(params=["memory", "sqlite", "amqp", "redis"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = request.param
    if kind == "memory":
        return f"memory://poison-{uuid.uuid4().hex}"
    if kind == "sqlite":
        return f"sqlite://{tmp_path}/broker.db"
    if kind == "amqp":
        return str(request.getfixturevalue("rabbitmq_url"))
    return redis_namespace(request)


@pytest.fixture
async def client(broker: str) -> AsyncIterator[App]:
    app = App("poison-client", broker=broker, result_backend="memory://")
    yield app
    await app.aclose()


@pytest.fixture
async def names(client: App) -> AsyncIterator[tuple[str, str]]:
    """A queue and a dead-letter queue of this test's own, deleted afterwards."""
    suffix = uuid.uuid4().hex[:8]
    queue, dead = f"poison-{suffix}", f"poison-dead-{suffix}"
    yield queue, dead
    transport = await client.atransport()
    for name in (queue, dead):
        await transport.delete_queue(name)


@contextmanager
def worker_process(
    tmp: Path, broker: str, queue: str, dead: str, *extra: str
) -> Iterator[WorkerProcess]:
    """``conveyor worker -c 1`` (and ``extra`` options) on ``queue`` in a child process,
    stopped afterwards."""
    log = tmp / "worker.log"
    env = worker_env(broker)
    env["CONVEYOR_TEST_DEAD_LETTERS"] = dead
    cmd = [sys.executable, "-c", "from conveyor.cli.main import main; main()"]
    cmd += ["-A", "tests.worker.poison_app", "worker", "-Q", queue, "-c", "1"]
    cmd += ["--hostname", "poison@test", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=out)
    worker = WorkerProcess(proc, log, "poison@test")
    try:
        yield worker
    finally:
        worker.stop()


async def _drain(transport: Transport, queue: str, want: int, timeout: float) -> list[Envelope]:
    got: list[Envelope] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        delivery = await transport.get(queue)
        if delivery is None:
            await asyncio.sleep(0.05)
            continue
        await transport.ack(delivery)
        got.append(delivery.envelope)
    return got


async def test_poison_messages_are_dead_lettered_and_the_good_ones_run(
    broker: str, client: App, names: tuple[str, str], tmp_path: Path
) -> None:
    queue, dead = names
    transport = await client.atransport()
    await transport.declare_queue(Queue(queue))
    await transport.declare_queue(Queue(dead))
    for envelope, _ in POISON.values():
        await transport.publish(envelope, routing_key=queue)
    log = tmp_path / "ran.log"
    labels = [f"good-{n}" for n in range(3)]
    for label in labels:
        await transport.publish(
            Envelope(
                body=orjson.dumps([[label, str(log)], {}, _NO_EMBED]),
                headers={"task": "poison.record", "id": label},
            ),
            routing_key=queue,
        )
    if broker.startswith("memory://"):
        app = App(
            "poison",
            broker=broker,
            result_backend="memory://",
            config={"task_dead_letter_queue": dead},
        )
        app.task(name="poison.record")(poison_app.record.fn)
        worker = Worker(app, queues=[queue], concurrency=1, shutdown_grace=1.0)
        await worker.start()
        try:
            letters = await _drain(transport, dead, len(POISON), timeout=20)
        finally:
            await worker.stop()
        output = ""
    else:
        with worker_process(tmp_path, broker, queue, dead) as process:
            letters = await _drain(transport, dead, len(POISON), timeout=30)
            deadline = time.monotonic() + 20
            while not log.exists() or len(log.read_text().split()) < len(labels):
                assert time.monotonic() < deadline, process.output()
                await asyncio.sleep(0.05)
            output = process.output()
    assert log.read_text().split() == labels, output
    reasons = {
        str(e.headers.get("id") or orjson.loads(e.body)["id"]): str(
            e.headers["x-conveyor-dead-letter-reason"]
        )
        for e in letters
    }
    assert set(reasons) == set(POISON), output
    for task_id, (_, words) in POISON.items():
        assert words in reasons[task_id], (task_id, reasons[task_id])
        assert reasons[task_id].startswith("undecodable message: ")
    stats = await transport.queue_stats(queue)
    assert (stats.ready, stats.unacked) == (0, 0)


async def test_a_decoder_defect_dead_letters_naming_the_exception(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not a ProtocolError (a defect in a decoder): still dead-lettered, never left unacked."""
    import conveyor.worker.worker as worker_module

    def broken(envelope: Envelope, accept: object) -> object:
        raise OverflowError("an overflow nobody foresaw")

    monkeypatch.setattr(worker_module, "decode_task", broken)
    broker = f"memory://poison-{uuid.uuid4().hex}"
    app = App("poison", broker=broker, result_backend="memory://")
    transport = await app.atransport()
    await transport.declare_queue(Queue("defect"))
    await transport.declare_queue(Queue("dead_letter"))
    for n in range(6):
        await transport.publish(_v2(f"defect-{n}"), routing_key="defect")
    worker = Worker(app, queues=["defect"], concurrency=1, shutdown_grace=1.0)
    await worker.start()
    try:
        letters = await _drain(transport, "dead_letter", 6, timeout=10)
    finally:
        await worker.stop()
        await app.aclose()
    assert len(letters) == 6
    reason = letters[0].headers["x-conveyor-dead-letter-reason"]
    assert reason == "undecodable message: OverflowError: an overflow nobody foresaw"


async def test_an_eta_beyond_rabbitmq_delays_is_dead_lettered(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    """A Celery client's eta 1000 years ahead: the worker cannot postpone it on RabbitMQ (delays
    reach about 49.7 days), so it dead-letters it saying so, and goes on with the next."""
    app = App("poison-client", broker=rabbitmq_url, result_backend="memory://")
    suffix = uuid.uuid4().hex[:8]
    queue, dead = f"poison-{suffix}", f"poison-dead-{suffix}"
    transport = await app.atransport()
    await transport.declare_queue(Queue(queue))
    await transport.declare_queue(Queue(dead))
    try:
        for n in range(5):
            await transport.publish(
                _v2(f"far-{n}", eta="3026-01-01T00:00:00+00:00"), routing_key=queue
            )
        log = tmp_path / "ran.log"
        good = Envelope(
            body=orjson.dumps([["good", str(log)], {}, _NO_EMBED]),
            headers={"task": "poison.record", "id": "good"},
        )
        await transport.publish(good, routing_key=queue)
        with worker_process(tmp_path, rabbitmq_url, queue, dead) as process:
            letters = await _drain(transport, dead, 5, timeout=30)
            deadline = time.monotonic() + 20
            while not log.exists():
                assert time.monotonic() < deadline, process.output()
                await asyncio.sleep(0.05)
        assert len(letters) == 5, process.output()
        reason = str(letters[0].headers["x-conveyor-dead-letter-reason"])
        assert reason.startswith("could not postpone or revoke the task: a delay of"), reason
        assert "RabbitMQ" in reason
    finally:
        await transport.delete_queue(queue)
        await transport.delete_queue(dead)
        await app.aclose()


async def test_arguments_a_pool_process_cannot_take_fail_the_task_not_the_pool(
    tmp_path: Path,
) -> None:
    """Arguments nested deeper than pickle recurses (JSON allows 1024 levels): with the
    processes pool the task fails with that reason, and its pool process serves the next."""
    broker = f"sqlite://{tmp_path}/broker.db"
    app = App("poison-client", broker=broker, result_backend="memory://")
    transport = await app.atransport()
    await transport.declare_queue(Queue("deep"))
    deep = b"[" * 1020 + b"]" * 1020
    log = tmp_path / "ran.log"
    try:
        for n in range(3):  # more than the pool has processes: none may be lost
            body = b"[[" + deep + b', "' + str(log).encode() + b'"], {}, null]'
            await transport.publish(
                Envelope(body=body, headers={"task": "poison.record", "id": f"deep-{n}"}),
                routing_key="deep",
            )
        good = Envelope(
            body=orjson.dumps([["good", str(log)], {}, _NO_EMBED]),
            headers={"task": "poison.record", "id": "good"},
        )
        await transport.publish(good, routing_key="deep")
        with worker_process(tmp_path, broker, "deep", "dead", "--pool", "processes") as process:
            deadline = time.monotonic() + 60
            while not log.exists():
                assert time.monotonic() < deadline, process.output()
                await asyncio.sleep(0.05)
            output = process.output()
        assert log.read_text().split() == ["good"]
        assert output.count("cannot be passed to a pool process: RecursionError") == 3, output
        stats = await transport.queue_stats("deep")
        assert (stats.ready, stats.unacked) == (0, 0)
    finally:
        await app.aclose()


async def test_a_dead_letter_exchange_that_does_not_exist_falls_back_to_the_queue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A queue naming a dead-letter exchange nobody declared: its poison goes to the
    ``task_dead_letter_queue`` instead of staying unacked."""
    broker = f"memory://poison-{uuid.uuid4().hex}"
    app = App(
        "poison",
        broker=broker,
        result_backend="memory://",
        config={
            "task_queues": [
                Queue("dlx-missing", queue_arguments={"x-dead-letter-exchange": "nowhere"})
            ]
        },
    )
    transport = await app.atransport()
    await transport.declare_queue(Queue("dead_letter"))
    worker = Worker(app, queues=["dlx-missing"], concurrency=1, shutdown_grace=1.0)
    await worker.start()
    try:
        for n in range(6):
            await transport.publish(_v2(f"bad-{n}", eta=1e20), routing_key="dlx-missing")
        letters = await _drain(transport, "dead_letter", 6, timeout=10)
    finally:
        await worker.stop()
        await app.aclose()
    assert len(letters) == 6
    assert "'eta' is not a time" in str(letters[0].headers["x-conveyor-dead-letter-reason"])
    assert "dead-letter exchange 'nowhere' of queue 'dlx-missing' takes nothing" in caplog.text
