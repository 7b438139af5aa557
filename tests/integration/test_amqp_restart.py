"""A worker process survives losing RabbitMQ mid-stream: nothing is lost, consuming resumes.

RabbitMQ closes every connection of this test (``rabbitmqctl close_connection``, the targeted
form of ``close_all_connections``, so other tests on the shared broker keep theirs) while a
``conveyor worker`` process works through 5,000 acks-late tasks and the producer keeps sending.
The app below is what the worker process imports (``-A tests.integration.test_amqp_restart``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conveyor.app import App
from conveyor.transports import open_transport
from tests.rabbitmqctl import close_connections_named, needs_rabbitmqctl

TASKS = 5000
CONCURRENCY = 16
PREFETCH_MULTIPLIER = 4
IN_FLIGHT = CONCURRENCY * PREFETCH_MULTIPLIER  # the most deliveries a worker holds unacked
ROOT = Path(__file__).resolve().parents[2]

app = App("amqp-restart", config={"task_ignore_result": True})


@app.task(name="restart.record", acks_late=True)
def record(n: int) -> None:
    with open(os.environ["AMQP_RESTART_LOG"], "a") as log:
        log.write(f"{n} {time.time()}\n")


def completions(log: Path) -> list[tuple[int, float]]:
    if not log.exists():
        return []
    done = []
    for line in log.read_text().splitlines():
        number, _, at = line.partition(" ")
        if at:
            done.append((int(number), float(at)))
    return done


def start_worker(
    queue: str, env: dict[str, str], cwd: Path, output: Path
) -> subprocess.Popen[bytes]:
    """A ``conveyor worker`` process consuming ``queue``, holding at most ``IN_FLIGHT`` tasks."""
    command = [
        sys.executable,
        "-c",
        "from conveyor.cli.main import main; main()",
        "-A",
        "tests.integration.test_amqp_restart:app",
        "worker",
        "-Q",
        queue,
        "-c",
        str(CONCURRENCY),
        "--prefetch-multiplier",
        str(PREFETCH_MULTIPLIER),
        "--hostname",
        "restart@%h",
        "-l",
        "WARNING",
    ]
    with output.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not exit within 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.1)


@needs_rabbitmqctl
@pytest.mark.timeout(180)
async def test_worker_survives_lost_connections_without_losing_a_task(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    client_name = f"conveyor-restart-{uuid.uuid4().hex}"
    broker = f"{rabbitmq_url}?client_name={client_name}&reconnect_max_delay=1"
    queue = f"amqp-restart.{uuid.uuid4().hex}"
    log = tmp_path / "done.log"
    env = {
        **os.environ,
        "CONVEYOR_BROKER_URL": broker,
        "AMQP_RESTART_LOG": str(log),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    worker_log = tmp_path / "worker.log"
    worker = start_worker(queue, env, tmp_path, worker_log)
    producer = App("producer", broker=broker, config={"task_ignore_result": True})
    observer = open_transport(rabbitmq_url)
    await observer.connect()
    try:

        async def consuming() -> bool:
            try:
                return (await observer.queue_stats(queue)).consumers == 1
            except Exception:
                return False

        deadline = time.monotonic() + 30
        while not await consuming():
            assert worker.poll() is None, worker_log.read_text()
            assert time.monotonic() < deadline, "the worker did not start consuming"
            await asyncio.sleep(0.2)

        async def send_all() -> None:
            for start in range(0, TASKS, 50):
                await asyncio.gather(
                    *(
                        producer.asend_task("restart.record", (n,), queue=queue)
                        for n in range(start, min(start + 50, TASKS))
                    )
                )

        sending = asyncio.create_task(send_all())
        await wait_until(lambda: len(completions(log)) >= TASKS // 4, 60, "a quarter done")
        killed_at = time.time()
        closed = await asyncio.to_thread(close_connections_named, client_name)
        assert closed >= 2  # the worker's connection and the producer's

        await asyncio.wait_for(sending, 120)  # publishers waited for the reconnect and retried
        await wait_until(
            lambda: {n for n, _ in completions(log)} == set(range(TASKS)), 120, "all tasks done"
        )
        # When its connection went, the worker held at most IN_FLIGHT deliveries; every
        # completion past those was delivered on a new connection. A fast worker finishes the
        # whole stream well within a second of the reconnect, so count, don't wait a fixed time.
        finished = sorted(at for _, at in completions(log))
        before = sum(1 for at in finished if at <= killed_at)
        assert len(finished) > before + IN_FLIGHT, "the connection went too late in the stream"
        resumed = finished[before + IN_FLIGHT]
        assert resumed - killed_at < 10, "the worker took too long to consume again"
        assert worker.poll() is None, "the worker process died"
        assert await consuming()
    finally:
        await asyncio.to_thread(stop, worker)
        await producer.aclose()
        await observer.delete_queue(queue)
        await observer.delete_exchange(queue)  # made with the queue by task_create_missing_queues
        await observer.close()
    assert worker.returncode == 0, worker_log.read_text()[-3000:]
