"""``TaskResult``: a task's result (one per broadcast worker) in the project's database."""

from __future__ import annotations

from django.db import models

from conveyor.results.meta import State

__all__ = ["TaskResult"]


class TaskResult(models.Model):
    """What the ``django://`` result backend keeps about one task run.

    ``meta`` is the Celery-compatible JSON document conveyor's other backends store; the other
    columns repeat what the admin page lists and filters by.
    """

    task_id = models.CharField("task id", max_length=255, db_index=True)
    worker = models.CharField(
        max_length=255, blank=True, default="", help_text="set for broadcast results only"
    )
    task_name = models.CharField("task name", max_length=255, blank=True, default="")
    state = models.CharField(
        max_length=16, choices=[(s.value, s.value) for s in State], db_index=True
    )
    result = models.JSONField(null=True, blank=True)
    traceback = models.TextField(blank=True, default="")
    ran_on = models.CharField("worker hostname", max_length=255, blank=True, default="")
    date_done = models.DateTimeField(null=True, blank=True, db_index=True)
    meta = models.TextField(help_text="the stored JSON document")

    class Meta:
        verbose_name = "task result"
        ordering = ("-date_done", "-id")
        constraints = [
            models.UniqueConstraint(fields=("task_id", "worker"), name="conveyor_result_key")
        ]

    def __str__(self) -> str:
        return f"{self.task_name or 'task'}[{self.task_id}] {self.state}"
