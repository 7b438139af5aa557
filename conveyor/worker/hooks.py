"""Loading middleware from the ``worker_middleware`` setting, and the middleware that sends
the signals of :mod:`conveyor.signals`.

An entry of ``worker_middleware`` is a :class:`Middleware` instance, a Middleware subclass
(created with no arguments), or the import path of either: ``"module:attr"`` or
``"module.attr"``. Importing the module is also how its signal receivers get connected.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from conveyor import signals
from conveyor.errors import ConfigurationError
from conveyor.results.meta import State
from conveyor.worker.middleware import Middleware

if TYPE_CHECKING:
    from conveyor.task import Request
    from conveyor.worker.outcome import Outcome
    from conveyor.worker.worker import Worker

__all__ = ["SignalsMiddleware", "load_middleware"]


def _import(path: str) -> Any:
    module_name, colon, attr = path.partition(":")
    if not colon:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigurationError(
            f"worker_middleware entry {path!r} is not an import path: write 'module:attr'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"worker_middleware entry {path!r}: cannot import {module_name!r}: {exc}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(
                f"worker_middleware entry {path!r}: module {module_name!r} has no {attr!r}"
            ) from None
    return target


def load_middleware(entries: Iterable[Any]) -> list[Middleware]:
    """The middleware ``entries`` name (see the module's text), in order.

    Raises ConfigurationError naming an entry that cannot be imported or is not Middleware.
    """
    if isinstance(entries, (str, Middleware)):
        entries = [entries]
    loaded: list[Middleware] = []
    for entry in entries:
        target = _import(entry) if isinstance(entry, str) else entry
        if isinstance(target, type) and issubclass(target, Middleware):
            target = target()
        if not isinstance(target, Middleware):
            raise ConfigurationError(
                f"worker_middleware entry {entry!r} is a {type(target).__name__}, not a "
                "conveyor.Middleware (an instance or a subclass)"
            )
        loaded.append(target)
    return loaded


class SignalsMiddleware(Middleware):
    """Sends ``worker_ready``, ``worker_shutdown`` and the task signals; every worker has one,
    after the user's middleware (so its ``after_task`` runs first)."""

    def worker_started(self, worker: Worker) -> None:
        signals.worker_ready.send(worker)

    def worker_stopping(self, worker: Worker) -> None:
        signals.worker_shutdown.send(worker)

    def before_task(self, worker: Worker, request: Request) -> None:
        if not signals.task_prerun.connected:
            return
        task = worker.app.tasks.get(request.task)
        if task is not None:
            signals.send_task_prerun(task, request)

    def after_task(self, worker: Worker, request: Request, outcome: Outcome) -> None:
        if not signals.any_task_ended_receiver():
            return
        task = worker.app.tasks.get(request.task)
        if task is None or outcome.state is State.REVOKED:  # expired: never started
            return
        signals.send_task_ended(
            task,
            request,
            outcome.state,
            value=outcome.value,
            error=outcome.error,
            traceback=outcome.traceback,
            countdown=outcome.countdown,
        )
