"""Pluggable parts chosen by a URL's scheme, imported only when used."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from conveyor.errors import ConfigurationError

__all__ = ["class_for_url"]


def class_for_url(url: str, registry: Mapping[str, str], *, what: str) -> Any:
    """The class ``registry`` names ("module:Class") for ``url``'s scheme.

    Raises ConfigurationError naming ``what`` (e.g. "broker") and the known schemes when the
    scheme is not in ``registry``.
    """
    target = registry.get(urlsplit(url).scheme.lower())
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(registry))
        raise ConfigurationError(f"{what} URL {url!r} has no known scheme: use one of {known}")
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
