"""The remote service from the seeds: a separate codebase with its own worker.

Its tasks are called by name from other services (``send_task("remote.transcode", ...)``);
it does not import them, and they do not import it. Run its worker with::

    conveyor -A remote_service worker -Q remote_queue,broadcast --hostname remote@%h
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from conveyor import App, Broadcast, Queue, Task

config = {
    "task_queues": [
        Queue("web_queue", max_priority=10),
        Queue("remote_queue", max_priority=10),
        Broadcast("broadcast"),
    ],
    "task_routes": {
        "web.*": {"queue": "web_queue"},
        "remote.*": {"queue": "remote_queue"},
        "status.*": {"queue": "broadcast"},
    },
}

app = App("remote", config=config)

SUPPORTED = {".mp4", ".mkv", ".webm"}


@app.task(name="remote.transcode")
def transcode(path: str, codec: str = "h264") -> dict[str, str]:
    """Transcode a video; refuses formats it does not know (the error travels back)."""
    suffix = PurePosixPath(path).suffix
    if suffix not in SUPPORTED:
        raise ValueError(f"cannot transcode {suffix or 'a file without extension'}: {path}")
    return {"input": path, "output": str(PurePosixPath(path).with_suffix(".webm")), "codec": codec}


@app.task(name="remote.thumbnail")
async def thumbnail(path: str, size: int = 128) -> str:
    """An async task: runs on the worker's event loop."""
    return f"{PurePosixPath(path).stem}-{size}px.png"


@app.task(name="status.report", bind=True)
def report(self: Task) -> dict[str, object]:
    """Broadcast target: every worker that consumes ``broadcast`` answers for itself."""
    return {"service": "remote", "hostname": self.request.hostname, "pid": os.getpid()}
