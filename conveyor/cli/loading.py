"""Finding the user's App from ``-A module[:attribute]``."""

from __future__ import annotations

import importlib
import os
import sys

import click

from conveyor.app import App
from conveyor.errors import ConfigurationError

__all__ = ["AppRef", "app_from_context", "load_app"]


def load_app(spec: str) -> App:
    """Import ``module`` or ``module:attribute`` and return the App it names.

    With no attribute, the module's ``app`` is used, else its only App instance. The current
    directory is put on ``sys.path`` first, as ``python -m`` would. Raises ConfigurationError
    when the module cannot be imported, the attribute is missing, or it is not an App.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise ConfigurationError(f"-A {spec!r}: give a module, e.g. -A proj.tasks:app")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"-A {spec!r}: no module named {module_name!r} (looked in {cwd} and sys.path)"
            ) from exc
        raise ConfigurationError(f"-A {spec!r}: importing {module_name!r} failed: {exc}") from exc
    if attribute:
        target: object = module
        for part in attribute.split("."):
            if not hasattr(target, part):
                raise ConfigurationError(f"-A {spec!r}: {module_name!r} has no {attribute!r}")
            target = getattr(target, part)
    else:
        found = getattr(module, "app", None)
        if isinstance(found, App):
            target = found
        else:
            apps = [v for v in vars(module).values() if isinstance(v, App)]
            if len(apps) != 1:
                what = "no App" if not apps else f"{len(apps)} Apps"
                raise ConfigurationError(
                    f"-A {spec!r}: {module_name!r} has {what}; name one with -A {module_name}:NAME"
                )
            target = apps[0]
    if not isinstance(target, App):
        raise ConfigurationError(f"-A {spec!r} is {target!r}, not a conveyor App")
    return target


class AppRef:
    """The ``-A`` value, loaded on first use (so ``--help`` works without an app)."""

    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self._app: App | None = None

    def get(self) -> App:
        """The App; raises ConfigurationError when no ``-A`` was given or it cannot be loaded."""
        if self._app is None:
            if not self.spec:
                raise ConfigurationError(
                    "no app given: pass -A module[:attribute] (or set CONVEYOR_APP)"
                )
            self._app = load_app(self.spec)
        return self._app


def app_from_context(ctx: click.Context) -> App:
    """The App of the running ``conveyor`` command (see :class:`AppRef`)."""
    ref = ctx.find_object(AppRef)
    if ref is None:
        raise ConfigurationError("no app given: pass -A module[:attribute] (or set CONVEYOR_APP)")
    return ref.get()
