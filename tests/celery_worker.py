"""Start a real Celery 5 worker (by default the app in tests/worker/celery_side.py) as a child
process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def celery_worker(
    broker_url: str,
    queues: list[str],
    log: Path,
    *,
    backend_url: str = "rpc://",
    pool: str = "solo",
    keyprefix: str = "",
    app: str = "tests.worker.celery_side",
    hostname: str | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A Celery worker of ``app`` (a module reading its broker and backend from
    INTEROP_BROKER_URL and INTEROP_BACKEND_URL) consuming ``queues`` on ``broker_url``, its
    output in ``log``; killed on exit (Celery's own shutdown takes seconds and holds nothing a
    test needs)."""
    env = dict(
        os.environ,
        INTEROP_BROKER_URL=broker_url,
        INTEROP_BACKEND_URL=backend_url,
        INTEROP_KEYPREFIX=keyprefix,
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-Q",
            ",".join(queues),
            *(("-n", hostname) if hostname else ()),
            "-P",
            pool,
            "-c",
            "1",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "INFO",
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its own process group: the prefork pool's children too
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
