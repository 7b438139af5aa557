"""Helpers to run real worker processes on a SQLite broker in tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conveyor.app import App

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.worker.proc_app"


class WorkerProcess:
    """A ``conveyor worker`` child process, with its log in a file."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, hostname: str) -> None:
        self.proc = proc
        self.log = log
        self.hostname = hostname

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def worker_env(broker: str, backend: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["CONVEYOR_BROKER_URL"] = broker
    if backend is not None:
        env["CONVEYOR_RESULT_BACKEND"] = backend
    else:
        env.pop("CONVEYOR_RESULT_BACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


StartProcess = Callable[..., "WorkerProcess"]


@contextmanager
def running_workers(
    tmp: Path, broker: str, backend: str | None = None, app: str = APP
) -> Iterator[StartProcess]:
    """Yield ``start(name, *args)`` running workers of ``app`` (an import path); every worker
    started is stopped (SIGTERM, then KILL)."""
    started: list[WorkerProcess] = []

    def start(name: str, *args: str) -> WorkerProcess:
        log = tmp / f"{name}.log"
        hostname = f"{name}@test"
        cmd = [
            sys.executable,
            "-c",
            "from conveyor.cli.main import main; main()",
            "-A",
            app,
            "worker",
            "--hostname",
            hostname,
            *args,
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, env=worker_env(broker, backend), cwd=ROOT, stdout=out, stderr=out
            )
        worker = WorkerProcess(proc, log, hostname)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in reversed(started):
            worker.stop()


async def wait_consuming(app: App, queue: str, count: int = 1, timeout: float = 20) -> None:
    """Wait until ``queue`` has ``count`` consumers (the worker declared and consumes it)."""
    import asyncio

    from conveyor.errors import NotFound

    transport = await app.atransport()
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await transport.queue_stats(queue)).consumers >= count:
                return
        except NotFound:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"no worker consumed {queue!r} within {timeout} s")
        await asyncio.sleep(0.02)


async def wait_for_file(path: Path, worker: WorkerProcess, timeout: float = 20) -> None:
    """Wait until a task running in ``worker`` created ``path``."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(path.exists):
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout} s:\n{worker.output()}")
        await asyncio.sleep(0.01)
