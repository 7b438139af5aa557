"""At least once under fire: workers SIGKILLed mid-stream on every broker, and a Redis with AOF
killed and restarted mid-stream, lose no confirmed task (issue 15's "Done when"). A task may
run twice (a worker killed after running it, before its ack reached the broker); none may be
missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from conveyor.app import App
from tests.faults.conftest import PrivateRedis, StartWorker, wait_until

TASKS = 200
NAP = 0.02  # seconds per task: 4 slots do about 200 a second, so a cut lands mid-stream


def labels(path: Path) -> set[str]:
    return set(path.read_text().split()) if path.exists() else set()


async def send_all(client: App, ran: Path, count: int = TASKS) -> set[str]:
    """Send ``count`` tasks, each confirmed by the broker before this returns."""
    sent = {f"t{i}" for i in range(count)}
    await asyncio.gather(*(client.asend_task("faults.nap", [s, str(ran), NAP]) for s in sent))
    return sent


async def test_workers_killed_twice_mid_stream_lose_nothing(
    broker_url: str,
    tmp_path: Path,
    client_of: Callable[..., App],
    start_worker: StartWorker,
) -> None:
    client = client_of(broker_url)
    ran = tmp_path / "ran.txt"
    sent = await send_all(client, ran)
    for kill, progress in enumerate((TASKS // 4, TASKS // 2)):
        worker = start_worker(broker_url, "-c", "4", name=f"victim{kill}")
        await wait_until(lambda p=progress: len(labels(ran)) >= p, 60, worker.output)  # type: ignore[misc]
        worker.proc.kill()
        worker.proc.wait(timeout=10)
        assert len(labels(ran)) < TASKS, "the stream ended before the kill: nothing was tested"
    survivor = start_worker(broker_url, "-c", "4", name="survivor")
    await wait_until(
        lambda: labels(ran) >= sent,
        90,
        lambda: f"missing {sorted(sent - labels(ran))[:20]}\n{survivor.output()}",
    )
    assert labels(ran) == sent


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, persistent=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def test_a_redis_with_aof_killed_mid_stream_loses_nothing(
    durable_redis: PrivateRedis,
    tmp_path: Path,
    client_of: Callable[..., App],
    start_worker: StartWorker,
) -> None:
    url = f"{durable_redis.url}?lease=1&poll_interval=0.2"
    client = client_of(url)
    ran = tmp_path / "ran.txt"
    sent = await send_all(client, ran)
    worker = start_worker(url, "-c", "4")
    await wait_until(lambda: len(labels(ran)) >= TASKS // 3, 60, worker.output)
    durable_redis.restart()  # SIGKILL, then start again from its append-only file
    assert len(labels(ran)) < TASKS, "the stream ended before the restart: nothing was tested"
    await wait_until(
        lambda: labels(ran) >= sent,
        90,
        lambda: f"missing {sorted(sent - labels(ran))[:20]}\n{worker.output()}",
    )
    assert worker.alive(), worker.output()
    with redis.Redis(port=durable_redis.port) as r:
        assert r.config_get("appendonly")["appendonly"] == "yes"
