"""``conveyor call``, ``conveyor worker`` and ``conveyor demo`` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.worker.helpers import ROOT, StartProcess, running_workers, worker_env


def conveyor(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from conveyor.cli.main import main; main()", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def broker(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/broker.db"


@pytest.fixture
def start(tmp_path: Path, broker: str) -> Iterator[StartProcess]:
    with running_workers(tmp_path, broker) as start:
        yield start


def test_call_waits_for_the_result_and_reports_failures(broker: str, start: StartProcess) -> None:
    start("w")
    env = worker_env(broker)
    ok = conveyor(
        "-A", "tests.worker.proc_app", "call", "proc.add", "--args", "[20, 22]", "--wait", env=env
    )
    assert ok.returncode == 0, ok.stderr
    task_id, value = ok.stdout.split()
    assert len(task_id) == 36
    assert value == "42"
    bad = conveyor(
        "-A", "tests.worker.proc_app", "call", "proc.add", "--args", "[1]", "--wait", env=env
    )
    assert bad.returncode == 1
    assert "TypeError" in bad.stderr


def test_call_by_name_without_the_code_and_timeout(broker: str, tmp_path: Path) -> None:
    env = worker_env(broker)
    app_module = tmp_path / "bare.py"
    app_module.write_text("from conveyor import App\napp = App('bare')\n")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    out = conveyor(
        "-A",
        "bare",
        "call",
        "remote.transcode",
        "--kwargs",
        '{"path": "a.mp4"}',
        "--queue",
        "remote_queue",
        "--wait",
        "--timeout",
        "0.3",
        env=env,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("Error: no result for task")
    assert "Traceback" not in out.stderr


def test_call_rejects_bad_json(broker: str) -> None:
    out = conveyor(
        "-A", "tests.worker.proc_app", "call", "proc.add", "--args", "{oops", env=worker_env(broker)
    )
    assert out.returncode == 2
    assert "not valid JSON" in out.stderr


def test_worker_refuses_an_unknown_queue_in_one_line(broker: str, tmp_path: Path) -> None:
    env = worker_env(broker)
    strict = tmp_path / "strict.py"
    strict.write_text(
        "from conveyor import App\napp = App('s', config={'task_create_missing_queues': False})\n"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    out = conveyor("-A", "strict", "worker", "-Q", "nope", env=env)
    assert out.returncode == 2
    assert "queue 'nope' is not declared" in out.stderr
    assert "Traceback" not in out.stderr


def test_demo_runs_the_story_and_every_result_arrives() -> None:
    env = dict(os.environ)
    env.pop("CONVEYOR_BROKER_URL", None)
    env.pop("CONVEYOR_RESULT_BACKEND", None)
    out = conveyor("demo", env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "ran on web@" in text
    assert "ran on remote@" in text
    assert "ValueError('cannot transcode .avi" in text
    assert (
        "ran in this order:  top-9(p9), high-7(p7), mid-5(p5), mid-3(p3), low-1(p1), low-0(p0)"
        in text
    )
    assert "every result arrived" in text
