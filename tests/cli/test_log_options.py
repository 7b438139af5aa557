"""Logs a user can follow: in every pool a task's own lines carry its name and id, ``-l``
reaches the processes pool's children, ``--logfile`` and ``--log-format json``; and the
banner a worker prints at start."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conveyor.app import App
from tests.worker.helpers import ROOT

APP = "tests.cli.logging_app"
STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: "


def run_worker(tmp_path: Path, *options: str, queue: str) -> tuple[str, str, list[str]]:
    """Start ``conveyor -A logging_app worker OPTIONS``, run logs.plain and logs.coroutine
    through it, stop it; return its stdout, its log file and the two task ids."""
    broker = f"sqlite://{tmp_path / 'broker.db'}"
    env = dict(os.environ)
    env["CONVEYOR_BROKER_URL"] = broker
    env.pop("CONVEYOR_RESULT_BACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    logfile = tmp_path / "worker.log"
    command = [sys.executable, "-m", "conveyor", "-A", APP, "worker", "-Q", queue, "-c", "1"]
    worker = subprocess.Popen(
        [*command, "--logfile", str(logfile), *options],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = App("client", broker=broker)
    try:
        sent = [
            client.send_task("logs.plain", args=["hi"], queue=queue),
            client.send_task("logs.coroutine", args=["ho"], queue=queue),
        ]
        assert [result.get(timeout=60) for result in sent] == ["hi", "ho"]
    finally:
        client.close()
        worker.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            stdout, stderr = worker.communicate()
    assert worker.returncode == 0, stderr
    assert stderr == ""  # every line went to the log file
    return stdout, logfile.read_text(), [result.id for result in sent]


@pytest.mark.parametrize(
    ("pool", "process"),
    [("asyncio", "MainProcess"), ("threads", "MainProcess"), ("processes", "conveyor-pool")],
)
def test_a_tasks_own_lines_carry_its_name_and_id_in_every_pool(
    tmp_path: Path, pool: str, process: str
) -> None:
    queue = f"logs-{uuid.uuid4().hex[:8]}"
    _, log, (plain, coroutine) = run_worker(tmp_path, "-P", pool, "-l", "info", queue=queue)
    expected = [
        rf"{STAMP}INFO/{process}\] logs\.plain\[{plain}\] {APP}: plain says hi",
        rf"{STAMP}WARNING/{process}\] logs\.plain\[{plain}\] {APP}: careful with hi",
        rf"{STAMP}INFO/{process}\] logs\.coroutine\[{coroutine}\] {APP}: coroutine says ho",
        rf"{STAMP}INFO/MainProcess\] conveyor\.worker: task logs\.plain\[{plain}\] succeeded in ",
    ]
    for pattern in expected:
        assert re.search(f"^{pattern}", log, re.MULTILINE), f"{pattern!r} not in:\n{log}"


def test_the_log_level_reaches_pool_processes(tmp_path: Path) -> None:
    queue = f"logs-{uuid.uuid4().hex[:8]}"
    _, log, (plain, _) = run_worker(tmp_path, "-P", "processes", "-l", "warning", queue=queue)
    assert "plain says hi" not in log
    assert re.search(
        rf"^{STAMP}WARNING/conveyor-pool\] logs\.plain\[{plain}\] {APP}: careful with hi$",
        log,
        re.MULTILINE,
    ), log


def test_json_log_lines_for_log_shippers(tmp_path: Path) -> None:
    queue = f"logs-{uuid.uuid4().hex[:8]}"
    banner, log, (plain, _) = run_worker(
        tmp_path, "-P", "processes", "--log-format", "json", queue=queue
    )
    assert banner == ""
    records = [json.loads(line) for line in log.splitlines()]
    mine = [r for r in records if r["task_id"] == plain and r["logger"] == APP]
    assert [(r["level"], r["message"], r["process"], r["task_name"]) for r in mine] == [
        ("INFO", "plain says hi", "conveyor-pool", "logs.plain"),
        ("WARNING", "careful with hi", "conveyor-pool", "logs.plain"),
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", mine[0]["time"])
    assert records[0]["message"].startswith("conveyor 0.1.0 worker ")  # the banner, as JSON
    assert f"[queues]\n  .> {queue}  exchange={queue}(direct)" in records[0]["message"]
    worker_lines = [r for r in records if r["logger"] == "conveyor.worker"]
    assert all(r["task_id"] is None for r in worker_lines)
    assert any(r["message"].startswith(f"task logs.plain[{plain}] succeeded") for r in records)


def test_the_banner_says_what_the_worker_serves(tmp_path: Path) -> None:
    queue = f"logs-{uuid.uuid4().hex[:8]}"
    banner, _, _ = run_worker(tmp_path, "-n", "banner@test", "-l", "debug", queue=queue)
    assert banner.splitlines() == [
        "conveyor 0.1.0 worker banner@test",
        "[config]",
        f"  .> app:         {APP}",
        f"  .> broker:      sqlite://{tmp_path / 'broker.db'}",
        f"  .> results:     sqlite://{tmp_path / 'broker.db'}",
        "  .> pool:        asyncio, concurrency 1, prefetch 4",
        "[queues]",
        f"  .> {queue}  exchange={queue}(direct) key={queue}",
        "[tasks]",
        "  . logs.coroutine",
        "  . logs.plain",
        "[settings that differ from the defaults]",
        "  task_routes = {'logs.*': {'queue': 'logs_queue'}}",
    ]


def test_a_log_file_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    where = tmp_path / "no" / "such" / "dir" / "worker.log"
    for command in ("worker", "beat"):
        out = subprocess.run(
            [sys.executable, "-m", "conveyor", "-A", APP, command, "--logfile", str(where)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (out.returncode, out.stdout) == (2, "")
        assert out.stderr == (
            f"Error: cannot open --logfile {where}: No such file or directory; give a file in a "
            "directory you can write\n"
        )
