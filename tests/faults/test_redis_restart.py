"""A Redis restarted without persistence comes back empty: the worker and a connected client
declare their topology again and go on (issue 15, item 6). Before, the worker exited ("the
broker ended the subscription") and the client's next send failed ("exchange does not exist").

Runs on a private redis-server (ports 6391-6399) so the shared one stays up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.app import App
from tests.faults.conftest import PrivateRedis, StartWorker, wait_until


def ran_labels(path: Path) -> list[str]:
    return sorted(path.read_text().split()) if path.exists() else []


async def test_worker_and_client_declare_again_after_redis_restarts_empty(
    private_redis: PrivateRedis,
    tmp_path: Path,
    client_of: Callable[..., App],
    start_worker: StartWorker,
) -> None:
    url = f"{private_redis.url}?lease=1&poll_interval=0.2"
    client = client_of(url)
    ran = tmp_path / "ran.txt"
    worker = start_worker(url, "-c", "1")
    before = [f"before-{i}" for i in range(3)]
    for label in before:
        await client.asend_task("faults.record", [label, str(ran)])
    await wait_until(lambda: ran_labels(ran) == before, 30, worker.output)

    private_redis.restart_empty()
    # the idle worker finds its queue gone and declares it again, on its own
    await wait_until(
        lambda: "lost its data (restarted empty?)" in worker.output(), 20, worker.output
    )
    assert worker.alive(), worker.output()

    after = [f"after-{i}" for i in range(5)]
    for label in after:  # the client's sends go through: it declares its topology again
        await client.asend_task("faults.record", [label, str(ran)])
    await wait_until(
        lambda: ran_labels(ran) == sorted(before + after),
        30,
        lambda: f"ran {ran_labels(ran)}\n{worker.output()}",
    )
    assert worker.alive(), worker.output()


async def test_a_connected_client_declares_again_and_its_send_is_stored(
    private_redis: PrivateRedis,
    client_of: Callable[..., App],
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = client_of(f"{private_redis.url}?lease=1")
    await client.asend_task("faults.record", ["lost", "/nonexistent"])
    private_redis.restart_empty()
    with caplog.at_level(logging.WARNING, logger="conveyor.transports"):
        await client.asend_task("faults.record", ["kept", "/nonexistent"])
    assert "lost its data (restarted empty?)" in caplog.text
    transport = await client.atransport()
    assert (await transport.queue_stats(queue_name)).ready == 1
    delivery = await transport.get(queue_name)
    assert delivery is not None
    assert b'"kept"' in delivery.envelope.body
