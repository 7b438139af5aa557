"""Real beat and worker processes on SQLite, Redis and RabbitMQ: each due time sent once.

Two ``conveyor beat`` processes and a worker run a 1 s entry for 20 s, the leader SIGKILLed
half way: every due time from the first to the last reaches the worker exactly once (counted by
the derived task ids), and the gap the kill leaves is at most the lease (3 s here) plus a second
of polling and load.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conveyor import App
from conveyor.beat import Beat, task_id_for
from tests.beat.proc_app import make_app
from tests.conftest import redis_namespace
from tests.worker.helpers import ROOT, wait_consuming

LEASE = 3.0
RUN = 20.0
KILL_AFTER = 10.0


class Processes:
    """Start ``conveyor -A tests.beat.proc_app ...`` children; stop them all at the end."""

    def __init__(self, tmp: Path, broker: str, name: str, backend: str) -> None:
        self.tmp = tmp
        self.log = tmp / "tasks.log"
        self.env = dict(os.environ)
        self.env.update(
            CONVEYOR_BROKER_URL=broker,
            CONVEYOR_RESULT_BACKEND=backend,
            BEAT_TEST_NAME=name,
            BEAT_TEST_LEASE=str(LEASE),
            BEAT_TEST_LOG=str(self.log),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, label: str, *args: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-c", "from conveyor.cli.main import main; main()"]
        with open(self.tmp / f"{label}.out", "wb") as out:
            proc = subprocess.Popen(
                [*cmd, "-A", "tests.beat.proc_app", *args],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=out,
            )
        self.started.append((label, proc))
        return proc

    def output(self, label: str) -> str:
        return (self.tmp / f"{label}.out").read_text(errors="replace")

    def outputs(self) -> str:
        return "\n".join(f"--- {label}\n{self.output(label)}" for label, _ in self.started)

    def stop(self) -> None:
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.started:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def received(self) -> list[tuple[str, str, float]]:
        if not self.log.exists():
            return []
        rows = [line.split() for line in self.log.read_text().splitlines() if line]
        return [(r[0], r[1], float(r[2])) for r in rows]


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/broker.db"
    if request.param == "redis":
        return redis_namespace(request)
    url: str = request.getfixturevalue("rabbitmq_url")
    return url


@pytest.fixture
def name() -> str:
    return f"beat-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def processes(tmp_path: Path, broker: str, name: str) -> Iterator[Processes]:
    running = Processes(tmp_path, broker, name, f"sqlite://{tmp_path}/results.db")
    try:
        yield running
    finally:
        running.stop()
        if broker.startswith("amqp"):
            asyncio.run(_delete_rabbitmq_queues(broker, name))


async def _delete_rabbitmq_queues(broker: str, name: str) -> None:
    async with App("cleanup", broker=broker) as app:
        transport = await app.atransport()
        for queue in (f"beatq-{name}", f"beat.{name}.state", f"beat.{name}.view"):
            await transport.delete_queue(queue)
        await transport.delete_exchange(f"broadcast_tasks-{name}")


def leader_of(processes: Processes, labels: list[str]) -> str | None:
    leaders = [label for label in labels if "is now the leader" in processes.output(label)]
    return leaders[-1] if leaders else None


async def test_two_beats_and_a_leader_killed_send_each_due_time_once(
    processes: Processes, broker: str, name: str
) -> None:
    processes.start("worker", "worker", "-Q", f"beatq-{name}", "--hostname", "w@test")
    async with App("client", broker=broker) as client:
        await wait_consuming(client, f"beatq-{name}")
    began = datetime.now(UTC)
    beats = {label: processes.start(label, "beat") for label in ("beat1", "beat2")}
    await asyncio.sleep(KILL_AFTER)
    victim = leader_of(processes, list(beats))
    assert victim is not None, processes.outputs()
    beats[victim].send_signal(signal.SIGKILL)
    killed_at = time.time()
    survivor = next(label for label in beats if label != victim)
    await asyncio.sleep(RUN - KILL_AFTER)
    assert "is now the leader" in processes.output(survivor), processes.outputs()
    beats[survivor].send_signal(signal.SIGTERM)
    beats[survivor].wait(timeout=15)
    await asyncio.sleep(1.0)  # the worker runs what was sent last

    received = processes.received()
    counts = Counter(task_id for task_id, _, _ in received)
    assert counts, processes.outputs()
    duplicates = {task_id: n for task_id, n in counts.items() if n > 1}
    assert not duplicates, processes.outputs()
    # Map each task id back to its due time: every one is a derived id of a whole second.
    start = began.replace(microsecond=0) - timedelta(seconds=5)
    by_id = {task_id_for(name, "every-second", start + timedelta(seconds=s)): s for s in range(60)}
    seconds = sorted(by_id[task_id] for task_id in counts)
    assert seconds == list(range(seconds[0], seconds[-1] + 1)), processes.outputs()
    assert len(seconds) >= RUN - LEASE - 2, processes.outputs()
    times = sorted(t for _, _, t in received)
    after_kill = [t for t in times if t > killed_at]
    before_kill = [t for t in times if t <= killed_at]
    assert after_kill, processes.outputs()
    gap = after_kill[0] - (before_kill[-1] if before_kill else killed_at)
    assert gap <= LEASE + 1.5, processes.outputs()


async def test_the_seeds_broadcast_entry_runs_once_per_worker_per_due_time(
    tmp_path: Path,
) -> None:
    broker = f"sqlite://{tmp_path}/broker.db"
    name = "seed"
    processes = Processes(tmp_path, broker, name, f"sqlite://{tmp_path}/broker.db")
    try:
        for worker in ("a", "b"):
            queues = f"beatq-{name},broadcast_tasks-{name}"
            processes.start(worker, "worker", "-Q", queues, "--hostname", f"{worker}@test")
        app = make_app(name)
        app.conf.broker_url = broker
        app.conf.beat_schedule = {"test-task": app.conf.beat_schedule["test-task"]}
        await wait_consuming(app, f"beatq-{name}", count=2)
        now = [datetime(2024, 1, 1, tzinfo=UTC)]
        beat = Beat(app, clock=lambda: now[0])
        for hour in (0, 1, 2, 3, 4, 5, 6):
            now[0] = now[0].replace(hour=hour)
            await beat.tick()
        await app.aclose()
        dues = [datetime(2024, 1, 1, h, tzinfo=UTC) for h in (0, 3, 6)]
        expected = {task_id_for(name, "test-task", due) for due in dues}
        for _ in range(200):
            if len(processes.received()) >= 6:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        runs = Counter((task_id, host) for task_id, host, _ in processes.received())
        assert runs == Counter({(t, h): 1 for t in expected for h in ("a@test", "b@test")}), (
            processes.outputs()
        )
    finally:
        processes.stop()
