"""Django signals sent when a task's result lands in the project's database.

Sent by the ``django://`` result backend (:mod:`conveyor.contrib.django.backend`) in the process
that stores the result (the worker), after the transaction that stored it commits:

- ``task_succeeded(sender=TaskResult, task_id=..., task_name=..., result=...)``
- ``task_failed(sender=TaskResult, task_id=..., task_name=..., error=..., traceback=...)``
  where ``error`` is the exception rebuilt from the stored result (its own type when that type
  is importable here, else :class:`~conveyor.errors.RemoteTaskError`).

A receiver that raises is logged and does not stop the others, nor the worker.
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = ["task_failed", "task_succeeded"]

task_succeeded = Signal()
task_failed = Signal()
