"""A conveyor App for a Django project: settings from ``django.conf.settings``, tasks found in
every installed app, ``@shared_task``, and sending only after the database transaction commits.

In ``proj/conveyor_app.py`` (imported by ``proj/__init__.py``)::

    import os
    from conveyor.contrib.django import DjangoApp

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    app = DjangoApp("proj")          # reads CONVEYOR_* settings
    app.autodiscover_tasks()         # imports tasks.py of every installed app

Autodiscovery needs Django's app registry: when the app is made before Django is set up (a
worker started with ``conveyor -A proj worker``) it sets Django up itself; when it is made while
Django populates its registry (the project's ``__init__`` imported by ``runserver``), it waits
until ``conveyor.contrib.django``'s ``AppConfig.ready`` (or the first use of a task).
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Unpack, cast, overload

from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.options import SendArgs, TaskArgs
from conveyor.task import Task

__all__ = ["DjangoApp", "DjangoTask", "discover_pending", "settings_with_prefix", "shared_task"]

_lock = threading.RLock()
_project_app: DjangoApp | None = None
_shared: list[tuple[Callable[..., Any], dict[str, Any]]] = []
_pending_discovery: list[tuple[DjangoApp, list[str] | None, str]] = []


def settings_with_prefix(settings: object, namespace: str) -> dict[str, Any]:
    """conveyor settings from Django ``settings``: ``CONVEYOR_TASK_ROUTES`` is ``task_routes``.

    Only upper-case names with the ``namespace`` prefix (and an underscore) are read.
    """
    prefix = f"{namespace}_"
    return {
        name[len(prefix) :].lower(): getattr(settings, name)
        for name in dir(settings)
        if name.startswith(prefix) and name.isupper()
    }


def _on_commit(send: Callable[[], object], using: str | None) -> None:
    from django.db import transaction

    transaction.on_commit(send, using=using)


class DjangoTask(Task):
    """A task of a :class:`DjangoApp`: a :class:`~conveyor.task.Task` that can also be sent
    when the surrounding database transaction commits."""

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> None:
        """:meth:`delay` once the current transaction (of the default database) commits;
        never if it rolls back. Outside a transaction (autocommit) it is sent at once. Returns
        None: the task id is not known until it is sent (use ``apply_async_on_commit`` with a
        ``task_id`` to know it)."""
        _on_commit(lambda: self.delay(*args, **kwargs), None)

    def apply_async_on_commit(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        using: str | None = None,
        **options: Unpack[SendArgs],
    ) -> None:
        """:meth:`apply_async` once the transaction of database ``using`` commits (see
        :meth:`delay_on_commit`)."""
        _on_commit(lambda: self.apply_async(args, kwargs, **options), using)


class DjangoApp(App):
    """An App configured from Django's settings (``CONVEYOR_*`` by default; see module).

    ``broker``, ``result_backend`` and ``config`` override what the settings say. The first
    DjangoApp made is the project's: ``@shared_task`` functions bind to it. A ``CONVEYOR_``
    name that is not a setting is a ConfigurationWarning naming it, as in any App.
    """

    task_class = DjangoTask

    def __init__(
        self,
        main: str | None = None,
        *,
        namespace: str = "CONVEYOR",
        broker: str | None = None,
        result_backend: str | None = None,
        config: Mapping[str, Any] | object | None = None,
    ) -> None:
        from django.conf import settings

        super().__init__(main)
        self.namespace = namespace
        self.conf.update_from(settings_with_prefix(settings, namespace))
        self._take_settings(config, broker, result_backend)
        global _project_app
        with _lock:
            if _project_app is None:
                _project_app = self
                shared, _shared[:] = list(_shared), []
        if _project_app is self:
            for fn, options in shared:
                self.task(**options)(fn)

    def send_task_on_commit(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        using: str | None = None,
        **options: Unpack[SendArgs],
    ) -> None:
        """:meth:`send_task` once the transaction of database ``using`` commits; never if it
        rolls back; at once outside a transaction."""
        _on_commit(lambda: self.send_task(name, args, kwargs, **options), using)

    def autodiscover_tasks(
        self, packages: Iterable[str] | None = None, related_name: str = "tasks"
    ) -> None:
        """Import ``<package>.<related_name>`` for each package (default: every installed
        Django app) that has one, registering the tasks it defines. A ``tasks`` module that
        fails to import raises; a package without one is skipped."""
        from django.apps import apps

        names = None if packages is None else list(packages)
        if names is None and not apps.ready:
            if apps.loading:  # inside django.setup(): finish in AppConfig.ready
                with _lock:
                    _pending_discovery.append((self, names, related_name))
                return
            import django

            django.setup()
        if names is None:
            names = [config.name for config in apps.get_app_configs()]
        for package in names:
            _import_related(package, related_name)


def _import_related(package: str, related_name: str) -> None:
    module = f"{package}.{related_name}"
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        found = None
    if found is not None:
        importlib.import_module(module)


def discover_pending() -> None:
    """Run the autodiscoveries asked for while Django was loading (``AppConfig.ready``)."""
    with _lock:
        pending, _pending_discovery[:] = list(_pending_discovery), []
    for app, names, related_name in pending:
        app.autodiscover_tasks(names, related_name)


@overload
def shared_task(fn: Callable[..., Any], /) -> DjangoTask: ...


@overload
def shared_task(
    fn: None = None, /, **options: Unpack[TaskArgs]
) -> Callable[[Callable[..., Any]], DjangoTask]: ...


def shared_task(
    fn: Callable[..., Any] | None = None, /, **options: Unpack[TaskArgs]
) -> DjangoTask | Callable[[Callable[..., Any]], DjangoTask]:
    """Define a task in a reusable app without importing the project's App: it is registered
    on the project's :class:`DjangoApp` (the first one made). Usable with or without ().

    Returns the registered task when the project's App exists (the usual case: its
    ``autodiscover_tasks`` imports the module); before that, a stand-in that registers the
    task when the App is made and forwards every use to it.
    """

    def define(func: Callable[..., Any]) -> DjangoTask:
        with _lock:
            app = _project_app
            if app is None:
                _shared.append((func, dict(options)))
                return cast(DjangoTask, _SharedTask(func, dict(options)))
        return cast(DjangoTask, app.task(**options)(func))

    if fn is not None:
        return define(fn)
    return define


class _SharedTask:
    """A shared task defined before the project's App: forwards to the App's task."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self._fn = fn
        self._options = options

    def _task(self) -> Task:
        app = _project_app
        if app is None:
            raise ConfigurationError(
                f"shared task {self._fn.__qualname__} used before the project's DjangoApp was "
                "made; import the project's App first (proj/__init__.py imports it)"
            )
        for task in app.tasks.values():
            if task.fn is self._fn:
                return task
        return app.task(**self._options)(self._fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._task()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task(), name)
