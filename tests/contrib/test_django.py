"""conveyor.contrib.django in a real Django project (examples/django_project).

Django's settings are global to a process, so each run is a child process: Django's own test
runner runs the project's tests (examples/django_project/shop/tests.py: settings, autodiscovery,
the ORM backend, the admin page, signals, on-commit sending) on PostgreSQL and on SQLite; and
the example runs end to end: ``manage.py migrate``, ``conveyor -A proj worker``, an order placed
through the view, priced by the worker, marked by a signal receiver, shown in the admin.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "django_project"

pytest.importorskip("django")


def project_env(tmp_path: Path, database: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["CONVEYOR_EXAMPLE_DB"] = database
    env["CONVEYOR_EXAMPLE_SQLITE"] = str(tmp_path / "db.sqlite3")
    env["CONVEYOR_EXAMPLE_BROKER"] = f"sqlite:///{tmp_path}/broker.db"
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], timeout: float = 100) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "error", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_the_projects_django_tests_pass(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    extra = {}
    if database == "postgresql":
        request.getfixturevalue("postgres_url")  # skips (or fails under CI) without PostgreSQL
        extra["CONVEYOR_EXAMPLE_PG_TEST_NAME"] = f"test_conveyor_dj_{uuid.uuid4().hex[:12]}"
    output = run(
        ["manage.py", "test", "shop", "--noinput"], project_env(tmp_path, database, **extra)
    )
    assert "Ran 10 tests" in output
    assert "\nOK" in output


@pytest.fixture
def scratch_database(postgres_url: str) -> Iterator[str]:
    """A new PostgreSQL database for the example, dropped afterwards."""
    name = f"conveyor_example_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


CLIENT = """
import time, django
django.setup()
from django.contrib.auth.models import User
from django.test import Client
from conveyor.contrib.django.models import TaskResult
from proj import app

client = Client()
placed = client.post("/orders/", {"item": "pear", "quantity": 4}).json()
unknown = client.post("/orders/", {"item": "durian", "quantity": 1}).json()
assert app.result(placed["task_id"]).get(timeout=60) == 20
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    states = [client.get(f"/orders/{o['order']}/").json() for o in (placed, unknown)]
    if [s["status"] for s in states] == ["priced", "failed"]:
        break
    time.sleep(0.1)
assert [s["status"] for s in states] == ["priced", "failed"], states
assert states[0]["total"] == 20
admin = User.objects.create_superuser("admin", "admin@example.com", "pw")
client.force_login(admin)
page = client.get("/admin/conveyor/taskresult/?state__exact=SUCCESS").content.decode()
assert placed["task_id"] in page and unknown["task_id"] not in page, page
assert TaskResult.objects.get(task_id=unknown["task_id"]).state == "FAILURE"
print("E2E OK")
"""


def test_the_example_runs_with_a_worker_on_postgresql(
    scratch_database: str, tmp_path: Path
) -> None:
    env = project_env(
        tmp_path,
        "postgresql",
        CONVEYOR_EXAMPLE_PG_NAME=scratch_database,
        DJANGO_SETTINGS_MODULE="proj.settings",
    )
    run(["manage.py", "migrate", "--noinput"], env)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from conveyor.cli.main import main; main()",
                "-A",
                "proj",
                "worker",
                "--hostname",
                "shop@test",
            ],
            cwd=PROJECT,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        output = run(["-c", CLIENT], env, timeout=100)
        assert "E2E OK" in output
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, log.read_text(errors="replace")
