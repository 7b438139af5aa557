"""The project's conveyor App: settings from ``CONVEYOR_*`` in proj/settings.py, tasks from the
``tasks.py`` of every installed app."""

import os

from conveyor.contrib.django import DjangoApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = DjangoApp("proj")
app.autodiscover_tasks()
