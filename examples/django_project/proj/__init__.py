"""The example project; importing it makes its conveyor App, so ``conveyor -A proj worker`` works."""

from proj.conveyor_app import app

__all__ = ["app"]
