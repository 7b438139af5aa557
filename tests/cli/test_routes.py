"""``conveyor routes explain`` / ``routes check`` against the apps in tests/routing/example_app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor.cli.main import main

APP = "tests.routing.example_app"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def explain_json(*args: str) -> dict[str, object]:
    code, out, err = run("-A", APP, "routes", "explain", *args, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def test_explain_a_routed_task() -> None:
    code, out, err = run("-A", APP, "routes", "explain", "feed.tasks.import_feed")
    assert code == 0
    assert err == ""
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "task_routes[0][0] 'feed.tasks.*'" in lines["decided by"]
    assert "'tasks'" in lines["exchange"]
    assert "topic" in lines["exchange type"]
    assert "'feed.import'" in lines["routing key"]
    assert "feed_tasks" in lines["received by"]


def test_explain_json_has_the_whole_answer() -> None:
    data = explain_json("video.tasks.compress", "--args", '["a.mp4"]')
    assert data == {
        "task": "video.tasks.compress",
        "registered": True,
        "decided_by": r"task_routes[0][1] /(video|image)\.tasks\..*/",
        "exchange": "media",
        "exchange_type": "direct",
        "routing_key": "media",
        "priority": 5,
        "sources": {
            "queue": r"task_routes[0][1] /(video|image)\.tasks\..*/",
            "priority": r"task_routes[0][1] /(video|image)\.tasks\..*/",
        },
        "queue": "media",
        "queue_created_on_demand": False,
        "broadcast": None,
        "queues": ["media"],
        "exchanges_tried": ["media"],
        "reaches_a_queue": True,
    }


def test_explain_options_override_like_apply_async() -> None:
    data = explain_json("video.tasks.compress", "--priority", "9", "--routing-key", "media")
    assert data["priority"] == 9
    assert data["sources"] == {
        "queue": r"task_routes[0][1] /(video|image)\.tasks\..*/",
        "priority": "explicit option",
        "routing_key": "explicit option",
    }
    data = explain_json("feed.tasks.import_feed", "--queue", "somewhere_new")
    assert data["decided_by"] == "explicit option"
    assert data["queues"] == ["somewhere_new"]
    assert data["queue_created_on_demand"] is True


def test_explain_task_attribute_broadcast_and_default() -> None:
    assert explain_json("web.tasks.render")["decided_by"] == "task attribute"
    broadcast = explain_json("tasks.reload_cache")
    assert (broadcast["exchange_type"], broadcast["broadcast"]) == ("fanout", "broadcast_tasks")
    unknown = explain_json("remote.transcode", "--kwargs", '{"path": "/x"}')
    assert unknown["registered"] is False
    assert unknown["decided_by"] == "default"
    assert (unknown["routing_key"], unknown["queues"]) == ("task.default", ["default"])


def test_explain_warns_loudly_and_fails_when_nothing_receives_it() -> None:
    code, out, err = run(
        "-A", APP, "routes", "explain", "x.y", "--exchange", "tasks", "--routing-key", "nope.x"
    )
    assert code == 1
    assert "NO QUEUE" in out
    assert "WARNING" in err
    assert "would reach NO QUEUE" in err
    assert "exchange 'tasks' (topic) for routing key 'nope.x'" in err
    code, out, _ = run(
        "-A",
        APP,
        "routes",
        "explain",
        "x.y",
        "--exchange",
        "tasks",
        "--routing-key",
        "nope.x",
        "--json",
    )
    assert code == 1
    assert json.loads(out)["reaches_a_queue"] is False


def test_explain_headers_route() -> None:
    data = explain_json(
        "x", "--exchange", "media", "--headers", '{"a": 1}', "--routing-key", "media"
    )
    assert data["queues"] == ["media"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--args", "{"], "not valid JSON"),
        (["--args", '{"a": 1}'], "must be a JSON list"),
        (["--kwargs", "[1]"], "must be a JSON object"),
        (["--priority", "300"], "300"),
    ],
)
def test_explain_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    code, _, err = run("-A", APP, "routes", "explain", "x", *args)
    assert code == 2
    assert message in err


def test_check_a_clean_app() -> None:
    code, out, _ = run("-A", APP, "routes", "check")
    assert code == 0
    assert "0 error(s), 0 warning(s) (4 registered task(s) checked)" in out


def test_check_finds_the_errors_and_exits_non_zero() -> None:
    code, out, _ = run("-A", f"{APP}:broken", "routes", "check", "--json")
    assert code == 1
    data = json.loads(out)
    found = [(f["severity"], f["code"], f["subject"]) for f in data["findings"]]
    assert found == [
        ("error", "shadowed-rule", "task_routes[0][1] 'feed.tasks.*'"),
        ("error", "undeclared-queue", "task_routes[0][1] 'feed.tasks.*'"),
        ("error", "unroutable", "task_routes[0][2] 'video.*'"),
        ("warning", "priority-without-max", "task_routes[0][0] 'feed.*'"),
        ("warning", "default-queue", "task_default_queue"),
    ]
    assert (data["errors"], data["warnings"]) == (3, 2)
    code, out, _ = run("-A", f"{APP}:broken", "routes", "check")
    assert code == 1
    assert "shadowed-rule" in out
    assert "3 error(s), 2 warning(s)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["routes", "check"], "no app given: pass -A"),
        (
            ["-A", "tests.nowhere_at_all", "routes", "check"],
            "no module named 'tests.nowhere_at_all'",
        ),
        (["-A", f"{APP}:missing", "routes", "check"], "has no 'missing'"),
        (["-A", f"{APP}:import_feed", "routes", "check"], "not a conveyor App"),
        (["-A", "tests.routing.routers_fixture", "routes", "check"], "has no App"),
        (["-A", "tests.routing.example_app", "routes", "check"], None),
    ],
)
def test_app_loading_errors_are_one_line_and_exit_2(args: list[str], message: str | None) -> None:
    code, _, err = run(*args)
    if message is None:
        assert code == 0  # the module's `app` is found without naming it
        return
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_configuration_errors_from_the_router_exit_2() -> None:
    code, _, err = run(
        "-A", f"{APP}:broken", "routes", "explain", "feed.tasks.import_feed", "--queue", "nope"
    )
    assert code == 2
    assert err.startswith("Error: ")
    assert "task_create_missing_queues is off" in err


def test_the_installed_command_runs() -> None:
    env = {**os.environ, "CONVEYOR_APP": f"{APP}:broken"}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("conveyor")), "routes", "check", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["errors"] == 3
