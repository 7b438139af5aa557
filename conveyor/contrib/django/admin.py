"""The admin page of task results: listed newest first, filtered by state and task name."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from conveyor.contrib.django.models import TaskResult

__all__ = ["TaskResultAdmin"]


@admin.register(TaskResult)
class TaskResultAdmin(admin.ModelAdmin):
    """Read-only: results are written by workers, never by hand."""

    list_display = ("task_id", "task_name", "state", "ran_on", "date_done")
    list_filter = ("state", "task_name", "date_done")
    search_fields = ("task_id", "task_name")
    date_hierarchy = "date_done"
    readonly_fields = tuple(f.name for f in TaskResult._meta.fields)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
