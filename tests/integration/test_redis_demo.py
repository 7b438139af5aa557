"""``conveyor demo --broker redis://...``: the seeds' story runs on Redis, with results in Redis.

It runs under a key prefix of its own (deleted afterwards), so its fixed queue names never meet
another test's on the shared server.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import redis_namespace

CLI = "from conveyor.cli.main import main; main()"


@pytest.fixture
def namespaced_url(request: pytest.FixtureRequest) -> str:
    return redis_namespace(request)


def test_demo_runs_on_redis_with_redis_results(namespaced_url: str) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            CLI,
            "demo",
            "--broker",
            namespaced_url,
            "--result-backend",
            namespaced_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert f"results: {namespaced_url}" in output
    assert "ran on web@" in output
    assert "ran on remote@" in output
    assert "ValueError('cannot transcode .avi" in output
    assert (
        "ran in this order:  top-9(p9), high-7(p7), mid-5(p5), mid-3(p3), low-1(p1), low-0(p0)"
        in output
    )
    assert "every result arrived" in output
