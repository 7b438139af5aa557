"""Broker and backend URLs: the class a scheme names, the options in a query, a URL to print."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from conveyor.errors import ConfigurationError

__all__ = ["class_for_url", "parse_options", "redacted"]


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


def parse_options(
    url: str,
    given: Mapping[str, Any],
    spec: Mapping[str, tuple[type, Any]],
    *,
    what: str = "broker URL",
) -> dict[str, Any]:
    """Merge URL query options and ``given`` options (the latter win) into typed values.

    ``spec`` maps each option name to (type, default). Raises ConfigurationError naming the
    option and the URL (called ``what`` in the message) for an unknown name or a value of the
    wrong type.
    """
    raw: dict[str, Any] = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    raw.update(given)
    values = {name: default for name, (_, default) in spec.items()}
    for name, value in raw.items():
        if name not in spec:
            known = ", ".join(sorted(spec))
            raise ConfigurationError(
                f"unknown option {name!r} for {what} {url!r}: the options are {known}"
            )
        kind = spec[name][0]
        try:
            if kind is bool and isinstance(value, str):
                lowered = value.lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                converted: Any = lowered in ("1", "true", "yes", "on")
            else:
                converted = kind(value)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"option {name!r} of {what} {url!r} must be a {kind.__name__}, got {value!r}"
            ) from None
        if isinstance(converted, float) and not converted > 0:
            raise ConfigurationError(
                f"option {name!r} of {what} {url!r} must be more than zero, got {value!r}"
            )
        values[name] = converted
    return values


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
