"""RoutingSettings: the routing layer's own snapshot of the settings that route."""

from __future__ import annotations

import dataclasses

import pytest

from conveyor import Queue, Router, Settings
from conveyor.routing import RoutingSettings, settings_topology
from conveyor.routing.settings import ROUTING_SETTING_NAMES


def test_an_apps_settings_give_every_routing_setting_under_its_own_name() -> None:
    settings = Settings(task_routes={"web.*": "web"}, task_default_priority=3)
    snapshot = settings.routing_settings()
    assert set(ROUTING_SETTING_NAMES) <= Settings.names()
    for name in ROUTING_SETTING_NAMES:
        assert getattr(snapshot, name) is getattr(settings, name), name


def test_a_snapshot_is_frozen_and_routes_like_the_settings_it_came_from() -> None:
    settings = Settings(task_queues=[Queue("web")], task_routes={"web.*": "web"})
    snapshot = settings.routing_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.task_default_queue = "other"  # type: ignore[misc]
    assert Router(snapshot).route("web.render").queue_name == "web"
    assert Router(settings).route("web.render").queue_name == "web"
    assert settings_topology(snapshot) == settings_topology(settings)


def test_a_snapshot_built_by_hand_needs_no_application() -> None:
    snapshot = RoutingSettings(
        task_routes=None,
        task_queues=(),
        task_default_queue="jobs",
        task_default_exchange=None,
        task_default_exchange_type="direct",
        task_default_routing_key=None,
        task_create_missing_queues=True,
        task_queue_max_priority=None,
        task_default_priority=None,
    )
    assert Router(snapshot).route("any.task").queue_name == "jobs"
