"""Starting conveyor as a newcomer does: ``python -m conveyor``, and two services started from
two folders of their own, with no broker configured, meeting on the per-user default broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from tests.worker.helpers import ROOT


def newcomer_env(state: Path) -> dict[str, str]:
    """No broker or backend configured; the state directory (the default broker's home) is
    the test's own; this tree importable."""
    env = dict(os.environ)
    env.pop("CONVEYOR_BROKER_URL", None)
    env.pop("CONVEYOR_RESULT_BACKEND", None)
    env.pop("CONVEYOR_APP", None)
    env["CONVEYOR_STATE_DIR"] = str(state)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_python_m_conveyor_is_the_conveyor_command(tmp_path: Path) -> None:
    env = newcomer_env(tmp_path / "state")
    version = subprocess.run(
        [sys.executable, "-m", "conveyor", "--version"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (version.returncode, version.stdout) == (0, "conveyor, version 0.1.0\n")
    missing = subprocess.run(
        [sys.executable, "-m", "conveyor", "-A", "nowhere_to_be_found", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2
    assert missing.stderr == (
        "Error: -A 'nowhere_to_be_found': no module named 'nowhere_to_be_found' "
        f"(looked in {tmp_path} and sys.path)\n"
    )


def test_two_services_started_from_two_folders_meet_on_the_default_broker(
    tmp_path: Path,
) -> None:
    queue = f"remote_queue_{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    remote = tmp_path / "remote-codebase"
    web = tmp_path / "web-codebase"
    remote.mkdir()
    web.mkdir()
    (remote / "remote_service.py").write_text(
        textwrap.dedent(
            f"""
            import os
            from conveyor import App

            app = App("remote")

            @app.task(name="remote.where", queue={queue!r})
            def where(path):
                return [path, os.getcwd()]
            """
        )
    )
    (web / "web_client.py").write_text(
        textwrap.dedent(
            f"""
            from conveyor import App

            app = App("web")
            result = app.send_task("remote.where", args=["a.mp4"], queue={queue!r})
            print(result.get(timeout=60))
            print(app.broker_url)
            """
        )
    )
    env = newcomer_env(state)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "-A", "remote_service", "worker", "-Q", queue],
            env=env,
            cwd=remote,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = subprocess.run(
            [sys.executable, "web_client.py"],
            env=env,
            cwd=web,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert client.returncode == 0, client.stderr + log.read_text()
    assert client.stdout.splitlines() == [
        f"['a.mp4', '{remote}']",
        f"sqlite://{state / 'conveyor-broker.db'}",
    ]
    assert not (remote / "conveyor-broker.db").exists()
    assert not (web / "conveyor-broker.db").exists()
