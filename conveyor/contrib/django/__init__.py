"""conveyor in a Django project.

- :class:`DjangoApp`: an App whose settings come from Django's (``CONVEYOR_*``), with
  ``autodiscover_tasks()`` (``tasks.py`` of every installed app) and ``send_task_on_commit``.
- :func:`shared_task`: a task in a reusable app, bound to the project's DjangoApp.
- ``task.delay_on_commit(...)``: send once the database transaction commits.
- ``result_backend = "django://"`` with ``"conveyor.contrib.django"`` in ``INSTALLED_APPS``:
  results in the project's database (model ``TaskResult``, an admin page, migrations), and the
  signals :data:`task_succeeded` / :data:`task_failed` when a result lands.

Importing this package does not need Django to be set up; the models load with Django's apps.
"""

from __future__ import annotations

from conveyor.contrib.django.app import DjangoApp, DjangoTask, shared_task
from conveyor.contrib.django.signals import task_failed, task_succeeded

__all__ = ["DjangoApp", "DjangoTask", "shared_task", "task_failed", "task_succeeded"]
