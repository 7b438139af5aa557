"""``conveyor worker --autoscale / --max-tasks-per-child / --max-memory-per-child`` as a user
runs them: bad values refused in one line, good ones serving tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.app import App
from tests.cli.test_tasks_cli import conveyor
from tests.worker.helpers import StartProcess, running_workers, wait_consuming, worker_env
from tests.worker.proc_app import CONFIG


@pytest.fixture
def broker(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/broker.db"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--autoscale", "lots"],
            "Error: autoscale 'lots' is not MAX,MIN: give two whole numbers, like 10,3",
        ),
        (
            ["-P", "threads", "--max-tasks-per-child", "5"],
            "Error: max tasks/memory per child apply to the processes pool only, and this "
            "worker uses the threads pool: add --pool processes or leave them out",
        ),
    ],
)
def test_bad_controls_are_refused_in_one_line(broker: str, args: list[str], message: str) -> None:
    out = conveyor("-A", "tests.worker.proc_app", "worker", *args, env=worker_env(broker))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in out.stderr


@pytest.fixture
def start(tmp_path: Path, broker: str) -> Iterator[StartProcess]:
    with running_workers(tmp_path, broker) as start:
        yield start


async def test_a_processes_worker_with_autoscale_and_child_limits_serves(
    broker: str, start: StartProcess
) -> None:
    worker = start(
        "w",
        "-P",
        "processes",
        "--autoscale",
        "3,1",
        "--max-tasks-per-child",
        "2",
        "--max-memory-per-child",
        "500000",
        "-l",
        "info",
    )
    client = App("client", broker=broker, config=CONFIG)
    try:
        await wait_consuming(client, "default")
        results = [await client.asend_task("proc.add", args=[n, n]) for n in range(6)]
        values = [await result.aget(timeout=30) for result in results]
    finally:
        await client.aclose()
    assert values == [0, 2, 4, 6, 8, 10]
    await asyncio.sleep(0.5)
    assert "replacing pool process" in worker.output()
    assert "max_tasks_per_child" in worker.output()
