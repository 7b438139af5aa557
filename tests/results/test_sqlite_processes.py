"""The SQLite backend wakes a waiter in one process when another process stores a result."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from conveyor.results import open_backend
from tests.results.helpers import NoBrokerHost

WRITER = """
import asyncio, sys
from conveyor.results import ResultMeta, StoreRequest, open_backend
from tests.results.helpers import NoBrokerHost

async def main() -> None:
    backend = open_backend(sys.argv[1], host=NoBrokerHost())
    async with backend:
        await backend.store(StoreRequest(ResultMeta.success("xp", "hi", worker="other", task="t")))

asyncio.run(main())
"""


async def test_a_store_in_another_process_wakes_the_waiter(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/r.db?poll=60"
    backend = open_backend(url, host=NoBrokerHost())
    async with backend:
        waiting = asyncio.create_task(backend.wait("xp", timeout=30))
        await asyncio.sleep(0.1)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, url)
        assert await proc.wait() == 0
        stored_at = time.monotonic()
        meta = await waiting
        assert meta.result == "hi"
        # with a 60 s fallback poll, only the bell can have woken it this fast
        assert time.monotonic() - stored_at < 5
