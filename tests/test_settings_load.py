"""Celery's idioms for settings: module path strings, upper-case names, ``namespace=``, and a
warning (never a silent drop) for every name conveyor does not know."""

from __future__ import annotations

import warnings

import pytest

from conveyor import App, ConfigurationError
from conveyor.errors import ConfigurationWarning


def test_module_path_string_loads_the_module() -> None:
    app = App("svc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.config_from_object("tests.celeryconfigs.lower")
    assert app.conf.broker_url == "memory://celeryconfig-lower"
    assert app.conf.result_backend == "rpc"
    assert app.conf.task_default_queue == "default"
    assert [q.name for q in app.conf.task_queues] == ["default", "feeds"]
    assert app.router.route("feed.import").queue_name == "feeds"
    assert app.router.route("web.render").queue_name == "default"


def test_module_attribute_paths() -> None:
    module = "tests.celeryconfigs.objects"
    for path in (f"{module}:Config", f"{module}.Config"):
        app = App("svc")
        app.config_from_object(path)
        assert (app.conf.broker_url, app.conf.task_default_queue) == (
            "memory://celeryconfig-object",
            "default",
        )
    config = App("svc", config="tests.celeryconfigs.lower")
    assert config.conf.broker_url == "memory://celeryconfig-lower"


def test_a_module_path_that_cannot_be_imported_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigurationError, match=r"'tests\.celeryconfigs\.nowhere'"):
        App("svc").config_from_object("tests.celeryconfigs.nowhere")
    with pytest.raises(ConfigurationError, match="has no 'NOPE'"):
        App("svc").config_from_object("tests.celeryconfigs.lower:NOPE")


def test_upper_case_names_old_and_new() -> None:
    app = App("svc")
    with pytest.warns(ConfigurationWarning) as caught:
        app.config_from_object("tests.celeryconfigs.upper")
    assert app.conf.broker_url == "memory://celeryconfig-upper"
    assert app.conf.result_backend == "rpc"
    assert app.conf.task_routes == {"feed.*": {"queue": "feeds"}}
    assert app.conf.task_default_queue == "default"
    assert app.conf.worker_prefetch_multiplier == 1
    (only,) = [str(w.message) for w in caught]
    assert "'CELERY_TASK_DEFAULT_PRIORITI'" in only
    assert "did you mean 'task_default_priority'?" in only


def test_namespace_reads_only_its_names_and_warns_for_unknown_ones() -> None:
    app = App("svc")
    with pytest.warns(ConfigurationWarning) as caught:
        app.config_from_object("tests.celeryconfigs.django_settings", namespace="CELERY")
    assert app.conf.broker_url == "memory://celeryconfig-django"
    assert app.conf.result_backend == "rpc"
    assert app.conf.task_routes == {"feed.*": {"queue": "feeds"}}
    assert app.conf.task_default_queue == "default"
    # DEBUG and INSTALLED_APPS are Django's, not settings: no warning names them.
    (only,) = [str(w.message) for w in caught]
    assert "'CELERY_WORKER_HIJACK_ROOT_LOGGER' (read as 'worker_hijack_root_logger')" in only


def test_dict_sources_and_conf_update_warn_for_unknown_names() -> None:
    app = App("svc")
    with pytest.warns(ConfigurationWarning, match=r"'task_serialiser'.*'task_serializer'"):
        app.config_from_object({"task_serialiser": "json", "CELERY_DEFAULT_QUEUE": "q"})
    assert app.conf.task_default_queue == "q"
    with pytest.warns(ConfigurationWarning, match="'worker_hijack_root_logger'"):
        app.conf.update(worker_hijack_root_logger=False, task_default_priority=4)
    assert app.conf.task_default_priority == 4


def test_an_object_with_settings_as_attributes() -> None:
    class Config:
        broker_url = "memory://object"
        task_default_queue = "default"
        task_acks_lat = True

    app = App("svc")
    with pytest.warns(ConfigurationWarning, match="did you mean 'task_acks_late'"):
        app.config_from_object(Config)
    assert (app.conf.broker_url, app.conf.task_default_queue) == ("memory://object", "default")
