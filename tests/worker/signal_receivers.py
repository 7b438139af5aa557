"""A user's module of hooks, named by the ``worker_middleware`` setting in tests: importing it
connects its signal receivers; its Middleware records every hook."""

from __future__ import annotations

from typing import Any

from conveyor.signals import task_failure, worker_ready
from conveyor.task import Request
from conveyor.worker import Middleware, Outcome, Worker

EVENTS: list[str] = []


class Recording(Middleware):
    def before_task(self, worker: Worker, request: Request) -> None:
        EVENTS.append(f"middleware.before {request.task}")

    def after_task(self, worker: Worker, request: Request, outcome: Outcome) -> None:
        EVENTS.append(f"middleware.after {outcome.state.value}")


@worker_ready.connect
def on_ready(sender: Worker, **kwargs: Any) -> None:
    EVENTS.append(f"worker_ready {sender.hostname}")


@task_failure.connect
def on_failure(sender: Any, task_id: str, exception: BaseException, **kwargs: Any) -> None:
    EVENTS.append(f"task_failure {sender.name} {exception!r}")
