"""``conveyor beat --list/--pause/--resume/--trigger``, ``conveyor schedule`` and ``worker -B``."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor.cli.main import main
from tests.beat import proc_app
from tests.beat.test_processes import Processes


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    broker = f"sqlite://{tmp_path}/broker.db"
    monkeypatch.setenv("CONVEYOR_BROKER_URL", broker)
    return broker


def run(*args: str) -> str:
    result = CliRunner().invoke(main, ["-A", "tests.beat.proc_app", *args])
    assert result.exit_code == 0, result.output
    return result.output


def listing(*args: str) -> dict[str, dict[str, object]]:
    return {row["entry"]: row for row in json.loads(run(*args))}


def test_schedule_lists_entries_with_their_destinations(env: str) -> None:
    rows = listing("schedule", "--json")
    assert rows.keys() == {"every-second", "test-task"}
    seed = rows["test-task"]
    assert seed["schedule"] == "At minute 0 past every third hour [0 */3 * * *]"
    destination = seed["destination"]
    assert isinstance(destination, dict)
    assert destination["exchange_type"] == "fanout"
    broadcast = f"broadcast_tasks-{proc_app.NAME}"  # the app is imported once per process
    assert destination["received_by"] == f"every worker consuming broadcast {broadcast!r}"
    assert seed["last_due"] is None
    assert str(seed["next_due"]).endswith(":00:00+00:00")
    assert "test-task" in run("beat", "--list")


def test_pause_resume_and_trigger_from_the_command_line(env: str) -> None:
    assert run("beat", "--pause", "every-second") == "pause: every-second\n"
    assert listing("beat", "--list", "--json")["every-second"]["paused"] is True
    run("beat", "--resume", "every-second")
    assert listing("schedule", "--json")["every-second"]["paused"] is False
    run("beat", "--trigger", "test-task")
    result = CliRunner().invoke(main, ["-A", "tests.beat.proc_app", "beat", "--trigger", "nope"])
    assert result.exit_code == 2
    assert "no entry 'nope'" in result.output


def test_worker_with_beat_runs_its_own_schedule(tmp_path: Path, env: str) -> None:
    processes = Processes(tmp_path, env, "cli", f"sqlite://{tmp_path}/broker.db")
    try:
        processes.start("w", "worker", "-B", "-Q", "beatq-cli", "--hostname", "w@test")

        async def wait() -> None:
            for _ in range(300):
                if len(processes.received()) >= 3:
                    return
                await asyncio.sleep(0.1)

        asyncio.run(wait())
    finally:
        processes.stop()
    counts = Counter(task_id for task_id, _, _ in processes.received())
    assert len(counts) >= 3, processes.outputs()
    assert set(counts.values()) == {1}
    assert "is now the leader" in processes.output("w")
    assert "gave up the lease" in processes.output("w")
