"""The fault suite's fixtures: real worker processes, a private Redis, brokers by name.

Faults that would hurt the shared services (a Redis restarted empty) get a private
``redis-server`` on a port of 6391-6399 in a temporary directory, always stopped in a finally.
Tests on the shared RabbitMQ and Redis use names of their own (a unique queue, a key prefix).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis

from conveyor.app import App
from tests.conftest import redis_namespace

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.faults.fault_app"
REDIS_PORTS = range(6391, 6400)


class WorkerProcess:
    """A ``conveyor worker`` child process of the fault app, its output in a file."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def queue_name() -> str:
    return f"faults-{uuid.uuid4().hex[:12]}"


def worker_env(broker: str, queue: str, backend: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["CONVEYOR_BROKER_URL"] = broker
    env["CONVEYOR_FAULTS_QUEUE"] = queue
    env.pop("CONVEYOR_RESULT_BACKEND", None)
    if backend is not None:
        env["CONVEYOR_RESULT_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def start_worker(tmp_path: Path, queue_name: str) -> Iterator[StartWorker]:
    """``start(broker, *args)`` runs a worker of the fault app on ``queue_name``; every worker
    started is stopped (SIGTERM, then SIGKILL) at the end."""
    started: list[WorkerProcess] = []

    def start(
        broker: str, *args: str, name: str = "w", backend: str | None = None
    ) -> WorkerProcess:
        log = tmp_path / f"{name}-{len(started)}.log"
        cmd = [
            sys.executable,
            "-c",
            "from conveyor.cli.main import main; main()",
            "-A",
            APP,
            "worker",
            "--hostname",
            f"{name}@faults",
            *args,
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, env=worker_env(broker, queue_name, backend), cwd=ROOT, stdout=out, stderr=out
            )
        worker = WorkerProcess(proc, log)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in reversed(started):
            worker.stop()


@pytest.fixture
async def client_of(queue_name: str) -> AsyncIterator[Callable[..., App]]:
    """``client_of(broker)``: an App sending to the fault app's queue, closed at the end."""
    apps: list[App] = []

    def make(broker: str, backend: str | None = None) -> App:
        from conveyor import Queue

        app = App(
            "faults-client",
            broker=broker,
            result_backend=backend,
            config={
                "task_queues": [Queue(queue_name)],
                "task_default_queue": queue_name,
                "task_dead_letter_queue": f"{queue_name}.dead",
            },
        )
        apps.append(app)
        return app

    yield make
    for app in reversed(apps):
        await app.aclose()


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of each broker in turn (SQLite in tmp_path; Redis and RabbitMQ shared)."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite://{tmp_path}/broker.db?lease=1"
    if kind == "redis":
        return redis_namespace(request) + "&lease=1"
    return str(request.getfixturevalue("rabbitmq_url"))


def _free_port() -> int:
    for port in REDIS_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail(f"no free port in {REDIS_PORTS} for a private redis-server")


class PrivateRedis:
    """A ``redis-server`` of the test's own. Without ``persistent`` a restart comes back empty;
    with it, every write is in the append-only file (fsync always) before Redis answers."""

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.directory = directory
        self.persistent = persistent
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("redis-server is not installed")
        log = open(self.directory / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        """SIGKILL it and start it again on the same port (empty unless ``persistent``)."""
        self.stop()
        self.start()

    def restart_empty(self) -> None:
        """Kill it and start it again on the same port: everything it held is gone."""
        assert not self.persistent
        self.restart()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def wait_until(
    condition: Callable[[], bool], timeout: float, what: Callable[[], str]
) -> None:
    """Poll ``condition`` until it holds; fail saying ``what()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(what())
        await asyncio.sleep(0.05)
