"""The application: settings, the task registry, the router, and sending tasks.

``App`` is the one object a service creates::

    app = App("web", broker="sqlite:///broker.db", config={"task_routes": {"web.*": "web_queue"}})

    @app.task(name="web.render", queue="web_queue")
    def render(page: str) -> str: ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, overload

from conveyor.config import Settings
from conveyor.errors import ConfigurationError
from conveyor.task import Task

__all__ = ["App"]

_ROUTING_SETTINGS = (
    "task_routes",
    "task_queues",
    "task_default_queue",
    "task_default_exchange",
    "task_default_exchange_type",
    "task_default_routing_key",
    "task_create_missing_queues",
    "task_queue_max_priority",
    "task_default_priority",
)


class App:
    """A conveyor application: settings (``conf``), registered tasks and the broker they use.

    ``broker`` and ``result_backend`` are URLs (they override ``broker_url`` / ``result_backend``
    in ``config``); ``config`` is a dict, an object or a module whose setting names are loaded
    into :attr:`conf`. Raises ConfigurationError for an unknown setting name.
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        result_backend: str | None = None,
        config: Mapping[str, Any] | object | None = None,
    ) -> None:
        self.main = main
        self.conf = Settings()
        if config is not None:
            self.conf.update_from(config)
        if broker is not None:
            self.conf.broker_url = broker
        if result_backend is not None:
            self.conf.result_backend = result_backend
        self._tasks: dict[str, Task] = {}
        self._router: Any = None
        self._router_key: tuple[Any, ...] | None = None

    def __repr__(self) -> str:
        return f"<App {self.main or '__main__'}>"

    def config_from_object(self, source: Mapping[str, Any] | object) -> None:
        """Load settings from a dict, an object or a module (see :meth:`Settings.update_from`)."""
        self.conf.update_from(source)

    @property
    def tasks(self) -> Mapping[str, Task]:
        """Registered tasks by name (read-only view)."""
        return self._tasks

    @property
    def router(self) -> Any:
        """The Router for the current settings; rebuilt when a routing setting is reassigned."""
        key = tuple(
            (name, id(value), value if isinstance(value, (str, int, float, bool)) else None)
            for name in _ROUTING_SETTINGS
            for value in (getattr(self.conf, name),)
        )
        if self._router is None or key != self._router_key:
            # Imported lazily: the routing engine is only needed once something is routed.
            router_module = importlib.import_module("conveyor.routing.router")
            self._router = router_module.Router(self.conf)
            self._router_key = key
        return self._router

    def _task_name(self, fn: Callable[..., Any]) -> str:
        module = getattr(fn, "__module__", None) or "__main__"
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', 'task'))}"

    @overload
    def task(self, fn: Callable[..., Any], /) -> Task: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        exchange: str | None = None,
        exchange_type: str | None = None,
        routing_key: str | None = None,
        priority: int | None = None,
        ignore_result: bool | None = None,
        acks_late: bool | None = None,
        max_retries: int | None = 3,
        default_retry_delay: float = 180.0,
        autoretry_for: Sequence[type[BaseException]] = (),
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        time_limit: float | None = None,
        bind: bool = False,
    ) -> Callable[[Callable[..., Any]], Task]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        exchange: str | None = None,
        exchange_type: str | None = None,
        routing_key: str | None = None,
        priority: int | None = None,
        ignore_result: bool | None = None,
        acks_late: bool | None = None,
        max_retries: int | None = 3,
        default_retry_delay: float = 180.0,
        autoretry_for: Sequence[type[BaseException]] = (),
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        time_limit: float | None = None,
        bind: bool = False,
    ) -> Task | Callable[[Callable[..., Any]], Task]:
        """Register a function (plain or ``async def``) as a task; usable with or without ().

        ``name`` defaults to ``module.qualname``. Registering a second function under a name
        already taken raises ConfigurationError. See :class:`Task` for the options.
        """

        def register(func: Callable[..., Any]) -> Task:
            task_name = name or self._task_name(func)
            existing = self._tasks.get(task_name)
            if existing is not None and existing.fn is not func:
                raise ConfigurationError(
                    f"task name {task_name!r} is already registered for {existing.fn!r}; "
                    "give one of them another name="
                )
            task = Task(
                self,
                func,
                name=task_name,
                queue=queue,
                exchange=exchange,
                exchange_type=exchange_type,
                routing_key=routing_key,
                priority=priority,
                ignore_result=ignore_result,
                acks_late=acks_late,
                max_retries=max_retries,
                default_retry_delay=default_retry_delay,
                autoretry_for=autoretry_for,
                retry_backoff=retry_backoff,
                retry_backoff_max=retry_backoff_max,
                time_limit=time_limit,
                bind=bind,
            )
            self._tasks[task_name] = task
            return task

        if fn is not None:
            return register(fn)
        return register
