"""``conveyor worker`` loads a user's hooks module from the worker_middleware setting: its
middleware runs and the signal receivers it connects hear the worker and its tasks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conveyor.app import App
from tests.worker.helpers import ROOT, WorkerProcess, wait_consuming, worker_env

HOOKS = """
from conveyor import Middleware
from conveyor.signals import task_failure, task_success, worker_ready, worker_shutdown

LOG = {log!r}

def note(line):
    with open(LOG, "a") as f:
        f.write(line + "\\n")

@worker_ready.connect
def ready(sender, **kwargs):
    note(f"worker_ready {{sender.hostname}}")

@worker_shutdown.connect
def shutdown(sender, **kwargs):
    note("worker_shutdown")

@task_success.connect(sender="svc.add")
def succeeded(sender, result, **kwargs):
    note(f"task_success {{sender.name}} {{result}}")

@task_failure.connect
def failed(sender, exception, **kwargs):
    note(f"task_failure {{sender.name}} {{exception!r}}")

class Audit(Middleware):
    def before_task(self, worker, request):
        note(f"before {{request.task}} {{list(request.args)}}")
"""

SERVICE = """
from conveyor import App

app = App("svc", config={"worker_middleware": ["hooks:Audit"]})

@app.task(name="svc.add")
def add(x, y):
    return x + y

@app.task(name="svc.div", max_retries=0)
def div(x, y):
    return x / y
"""


def start_worker_process(tmp_path: Path, broker: str) -> WorkerProcess:
    env = worker_env(broker)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    log = tmp_path / "worker.out"
    cmd = [sys.executable, "-c", "from conveyor.cli.main import main; main()"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*cmd, "-A", "svc", "worker", "-n", "hooked@test"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    return WorkerProcess(proc, log, "hooked@test")


async def test_the_worker_loads_hooks_named_by_the_setting(tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    (tmp_path / "hooks.py").write_text(textwrap.dedent(HOOKS.format(log=str(log))))
    (tmp_path / "svc.py").write_text(textwrap.dedent(SERVICE))
    broker = f"sqlite://{tmp_path}/broker.db"
    worker = start_worker_process(tmp_path, broker)
    client = App("client", broker=broker)
    try:
        await wait_consuming(client, "celery")
        assert await (await client.asend_task("svc.add", args=[2, 3])).aget(timeout=20) == 5
        with pytest.raises(ZeroDivisionError):
            await (await client.asend_task("svc.div", args=[1, 0])).aget(timeout=20)
    finally:
        await client.aclose()
        await asyncio.to_thread(worker.stop)  # SIGTERM, and wait for it to exit
    assert log.read_text().splitlines() == [
        "worker_ready hooked@test",
        "before svc.add [2, 3]",
        "task_success svc.add 5",
        "before svc.div [1, 0]",
        "task_failure svc.div ZeroDivisionError('division by zero')",
        "worker_shutdown",
    ], worker.output()
