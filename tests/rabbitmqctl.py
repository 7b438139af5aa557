"""The local RabbitMQ's admin tool, for tests that close connections or make virtual hosts."""

from __future__ import annotations

import shutil
import subprocess

import pytest

needs_rabbitmqctl = pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl on this machine"
)


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl ARGS...`` and return its output; raises CalledProcessError on failure."""
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def close_connections_named(client_name: str) -> int:
    """Close the RabbitMQ connections whose client name contains ``client_name`` (other tests
    on the shared broker keep theirs); return how many."""
    listing = rabbitmqctl(
        "list_connections", "pid", "client_properties", "-q", "--no-table-headers"
    )
    pids = [line.split("\t")[0] for line in listing.splitlines() if client_name in line]
    for pid in pids:
        rabbitmqctl("close_connection", pid, "conveyor test")
    return len(pids)
