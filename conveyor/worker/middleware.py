"""Worker hooks: subclass :class:`Middleware` and override the hooks you need.

Hooks run in the worker's event loop, in the order the middleware was given; ``after_*`` hooks
run in reverse order. They must be quick: they run inline for every task. An exception in a
hook is logged and does not stop the task or the worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.task import Request
    from conveyor.transports.base import Delivery
    from conveyor.worker.outcome import Outcome
    from conveyor.worker.worker import Worker

__all__ = ["Middleware"]


class Middleware:
    """Do-nothing hooks around a worker's life and each task it runs."""

    def worker_started(self, worker: Worker) -> None:
        """The worker declared its queues and started consuming."""

    def worker_stopping(self, worker: Worker) -> None:
        """The worker stopped consuming and is finishing running tasks."""

    def before_task(self, worker: Worker, request: Request) -> None:
        """A task is about to run."""

    def after_task(self, worker: Worker, request: Request, outcome: Outcome) -> None:
        """A task ran (or was refused as expired); ``outcome`` says how it ended."""

    def dead_lettered(self, worker: Worker, delivery: Delivery, reason: str) -> None:
        """A message was dead-lettered (unknown task, undecodable) instead of run."""
