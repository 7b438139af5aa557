"""The Django app ``conveyor.contrib.django``: the ``TaskResult`` model, its admin page and
migrations. Add it to ``INSTALLED_APPS`` to keep results in the project's database."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["ConveyorConfig"]


class ConveyorConfig(AppConfig):
    """Labelled ``conveyor``: its table is ``conveyor_taskresult``."""

    name = "conveyor.contrib.django"
    label = "conveyor"
    verbose_name = "Conveyor task results"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from conveyor.contrib.django.app import discover_pending

        discover_pending()
