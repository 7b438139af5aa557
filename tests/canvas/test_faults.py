"""Workflows under failure: a worker killed while it runs a chord's last header task, and a
message whose workflow conveyor cannot run."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import pytest

from conveyor.app import App
from conveyor.canvas import chord
from conveyor.errors import ProtocolError
from conveyor.options import SendOptions
from conveyor.worker import Worker
from conveyor.worker.workflow import CHORD_HEADER, CHORD_SEND_HEADER
from tests.canvas.conftest import define, urls
from tests.worker.helpers import running_workers, wait_consuming, wait_for_file


@pytest.mark.parametrize("kind", ["sqlite", "redis", "amqp"])
async def test_sigkill_of_the_worker_running_the_last_header_runs_the_body_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, backend = urls(kind, request, tmp_path)
    queue = f"wf-kill-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("WF_QUEUE", queue)
    started = tmp_path / "started"
    runs = tmp_path / "runs"
    app = App("client", broker=broker, result_backend=backend)
    app.conf.task_default_queue = queue
    try:
        with running_workers(tmp_path, broker, backend, app="tests.canvas.proc_app") as start:
            doomed = start("doomed", "-c", "1")
            await wait_consuming(app, queue)
            header = [
                app.signature("wfproc.value", (1,)),
                app.signature("wfproc.value", (2,)),
                app.signature("wfproc.slow", (3, str(started))),
            ]
            body = app.signature("wfproc.body", kwargs={"runs": str(runs)})
            result = await chord(header, body).aapply_async()
            await wait_for_file(started, doomed)
            doomed.signal(signal.SIGKILL)
            doomed.wait(10)
            start("survivor", "-c", "2")
            assert await result.aget(timeout=60) == [1, 2, 3]
            await asyncio.sleep(1.0)  # a second body, if any, would land by now
            assert runs.read_text().splitlines() == ["[1, 2, 3]"]
    finally:
        if kind != "sqlite":
            transport = await app.atransport()
            await transport.delete_queue(queue)
        await app.aclose()


async def test_a_workflow_conveyor_cannot_run_is_dead_lettered_and_its_result_fails() -> None:
    url = f"memory://wf-{uuid.uuid4().hex}"
    app = App("dl", broker=url, result_backend=url)

    @app.task(name="dl.add")
    def add(x: int, y: int) -> int:
        return x + y

    worker = Worker(app, concurrency=1)
    await worker.start()
    try:
        chunks = {"task": "celery.chunks", "subtask_type": "chunks", "args": [], "kwargs": {}}
        result = await app.asend("dl.add", (1, 2), options=SendOptions(chain=[chunks]))
        with pytest.raises(ProtocolError, match="cannot run a 'chunks' signature"):
            await result.aget(timeout=10)
        transport = await app.atransport()
        for _ in range(100):
            if (await transport.queue_stats("dead_letter")).ready:
                break
            await asyncio.sleep(0.05)
        dead = await transport.get("dead_letter")
        assert dead is not None
        assert dead.envelope.headers["id"] == result.id
        assert "chunks" in str(dead.envelope.headers.get("x-conveyor-dead-letter-reason", ""))
    finally:
        await worker.stop()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
async def test_a_second_send_of_a_chord_body_is_recognised_and_not_run(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The body's sender died after sending it and before marking the chord done; another
    worker took the lapsed claim and sent the body again, with the same task id and its own
    send mark. Only the first send runs; a redelivery of it (same mark) runs again."""
    broker, backend = urls(kind, request, tmp_path)
    queue = f"wf-{uuid.uuid4().hex[:12]}"
    app = App("dup", broker=broker, result_backend=backend, config={"task_default_queue": queue})
    log: list[object] = []
    define(app, log)
    worker = Worker(app, concurrency=1)
    await worker.start()
    try:
        gid, body_id = uuid.uuid4().hex, uuid.uuid4().hex
        for send, value in (("claim-1", "first"), ("claim-2", "second"), ("claim-1", "again")):
            headers = {CHORD_HEADER: gid, CHORD_SEND_HEADER: send}
            options = SendOptions(task_id=body_id, headers=headers)
            await app.asend("wf.record", (value,), options=options)
        for _ in range(400):
            if len(log) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the second send, had it run, would be in by now
        assert sorted(log) == [["again"], ["first"]]
    finally:
        await worker.stop()
        await app.aclose()
