"""``conveyor demo --broker amqp://...``: the seeds' story runs on RabbitMQ.

It runs in a virtual host of its own (made with ``rabbitmqctl`` and deleted afterwards), so its
fixed queue names never meet another test's on the shared broker.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.rabbitmqctl import needs_rabbitmqctl, rabbitmqctl

CLI = "from conveyor.cli.main import main; main()"

pytestmark = needs_rabbitmqctl


@pytest.fixture
def vhost_url(rabbitmq_url: str) -> Iterator[str]:
    vhost = f"conveyor-demo-{uuid.uuid4().hex}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{rabbitmq_url.rstrip('/')}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


def test_demo_runs_on_rabbitmq(vhost_url: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", CLI, "demo", "--broker", vhost_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "results: rpc://" in output
    assert "ran on web@" in output
    assert "ran on remote@" in output
    assert "ran in this order:  top-9(p9), high-7(p7), mid-5(p5), mid-3(p3)" in output
    assert "every result arrived" in output
