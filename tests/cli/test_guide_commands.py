"""The routing guide's commands work as written: the default queue is ``celery``, so
``worker -Q feeds,celery`` runs both kinds of task; after ``task_default_queue = 'default'``,
``-Q feeds,default`` does; a worker without -Q consumes every queue in task_queues."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.app import App
from conveyor.errors import NotFound, ResultTimeout
from tests.worker.helpers import ROOT, wait_consuming, worker_env

WORKER = [
    sys.executable,
    "-c",
    "from conveyor.cli.main import main; main()",
    *("-A", "tests.cli.guide_app", "worker", "-c", "1"),
]


class Workers:
    def __init__(self, tmp: Path, broker: str) -> None:
        self.tmp, self.broker = tmp, broker
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, **env: str) -> Path:
        log = self.tmp / f"worker{len(self.procs)}.log"
        with log.open("wb") as out:
            self.procs.append(
                subprocess.Popen(
                    [*WORKER, *args],
                    env={**worker_env(self.broker), **env},
                    cwd=ROOT,
                    stdout=out,
                    stderr=out,
                )
            )
        return log

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    running = Workers(tmp_path, f"sqlite://{tmp_path}/broker.db")
    try:
        yield running
    finally:
        running.stop()


def client(broker: str, default_queue: str | None = None) -> App:
    env = {"GUIDE_DEFAULT_QUEUE": default_queue} if default_queue else {}
    os.environ.update(env)
    try:
        import importlib

        import tests.cli.guide_app as guide

        guide = importlib.reload(guide)
    finally:
        for key in env:
            os.environ.pop(key)
    guide.app.conf.broker_url = broker
    return guide.app


async def test_feeds_only_leaves_the_rest_in_celery_and_feeds_celery_runs_both(
    workers: Workers,
) -> None:
    app = client(workers.broker)
    try:
        workers.start("-Q", "feeds")
        await wait_consuming(app, "feeds")
        feed = await app.asend_task("feed.tasks.import_feed", ["a"])
        page = await app.asend_task("web.tasks.render", ["home"])
        assert await feed.aget(timeout=20) == "imported a"
        with pytest.raises(ResultTimeout):
            await page.aget(timeout=1)
        transport = await app.atransport()
        assert (await transport.queue_stats("celery")).ready == 1
        workers.start("-Q", "feeds,celery")
        assert await page.aget(timeout=20) == "rendered home"
    finally:
        await app.aclose()


async def test_task_default_queue_default_as_the_guide_changes_it(workers: Workers) -> None:
    app = client(workers.broker, default_queue="default")
    try:
        workers.start("-Q", "feeds,default", GUIDE_DEFAULT_QUEUE="default")
        await wait_consuming(app, "default")
        page = await app.asend_task("web.tasks.render", ["home"])
        assert await page.aget(timeout=20) == "rendered home"
        transport = await app.atransport()
        with pytest.raises(NotFound):
            await transport.queue_stats("celery")
    finally:
        await app.aclose()


async def test_without_q_a_worker_consumes_every_declared_queue(workers: Workers) -> None:
    app = client(workers.broker)
    try:
        log = workers.start(GUIDE_DECLARE="1")
        await wait_consuming(app, "feeds")
        await wait_consuming(app, "celery")
        feed = await app.asend_task("feed.tasks.import_feed", ["b"])
        page = await app.asend_task("web.tasks.render", ["about"])
        assert await feed.aget(timeout=20) == "imported b"
        assert await page.aget(timeout=20) == "rendered about"
        assert "feeds" in log.read_text()
    finally:
        await app.aclose()
