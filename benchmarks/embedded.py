"""The embedded SQLite broker, as ``run.py`` drives it: conveyor only (Celery and Dramatiq have
no SQLite broker), one broker file per run in ``BENCH_SQLITE_DIR``, results in the same file.

The worker processes import a copy of this file as their app module (see ``peers.py``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import peers

DIRECTORY = os.environ.setdefault("BENCH_SQLITE_DIR", tempfile.gettempdir())


def conveyor_urls(prefix: str) -> tuple[str, str]:
    url = f"sqlite:///{Path(DIRECTORY) / prefix.rstrip(':')}.db"
    return url, url


def not_here(prefix: str) -> Any:
    raise RuntimeError("Celery and Dramatiq have no SQLite broker")


def delete_file(queue: str, prefix: str) -> None:
    base = Path(DIRECTORY) / prefix.rstrip(":")
    for suffix in (".db", ".db-wal", ".db-shm", ".db.wake"):
        Path(f"{base}{suffix}").unlink(missing_ok=True)


BROKER = peers.Broker("SQLite", "sqlite (a file)", conveyor_urls, not_here, not_here, delete_file)
app = peers.worker_app(BROKER)
