"""The banner ``conveyor worker`` prints at start: who it is, where it connects, what it serves.

Its name, broker and result backend (passwords hidden), pool, concurrency and prefetch, the
queues it consumes with the exchange and routing key of each binding, and the tasks it knows;
with ``-l debug`` also the settings that differ from the defaults (secrets hidden). Printed on
stdout; with ``--log-format json`` logged instead, as one record, so that every line a log
shipper reads is JSON.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

import click

from conveyor import __version__
from conveyor.config import Settings
from conveyor.routing.entities import Binding, Broadcast, Exchange, Queue
from conveyor.urls import redacted
from conveyor.worker import Worker

__all__ = ["announce", "differing_settings", "worker_banner"]

_SECRET_WORDS = ("password", "secret", "token")
_URL_SETTINGS = ("broker_url", "result_backend")


def announce(worker: Worker, *, app_spec: str | None, loglevel: str, log_format: str) -> None:
    """Show ``worker``'s banner as the options ask (see the module's text)."""
    text = worker_banner(worker, app_spec=app_spec, settings=loglevel.upper() == "DEBUG")
    if log_format == "json":
        logging.getLogger("conveyor.worker").info("%s", text)
    else:
        click.echo(text)


def worker_banner(worker: Worker, *, app_spec: str | None, settings: bool = False) -> str:
    """The banner text for ``worker`` (no trailing newline); ``settings`` adds those that
    differ from the defaults. Raises RoutingError for a queue the router cannot resolve, as
    the worker's start would."""
    app = worker.app
    router = app.router
    lines = [
        f"conveyor {__version__} worker {worker.hostname}",
        "[config]",
        f"  .> app:         {app_spec or app.main or '__main__'}",
        f"  .> broker:      {redacted(app.broker_url)}",
        f"  .> results:     {redacted(app.backend_url)}",
        f"  .> pool:        {worker.pool_name}, concurrency {worker.concurrency}, "
        f"prefetch {worker.prefetch or 'unlimited'}",
        "[queues]",
    ]
    entities = [router.queue(name) for name in worker.queue_names]
    width = max(len(entity.name) for entity in entities)
    for entity in entities:
        lines.extend(_queue_lines(entity, width))
    lines.append("[tasks]")
    lines.extend(f"  . {name}" for name in sorted(app.tasks) or ["(none registered)"])
    if settings:
        lines.append("[settings that differ from the defaults]")
        differing = differing_settings(app.conf)
        lines.extend(f"  {name} = {value}" for name, value in differing)
        if not differing:
            lines.append("  (none)")
    return "\n".join(lines)


def _queue_lines(entity: Queue | Broadcast, width: int) -> list[str]:
    lead = f"  .> {entity.name:<{width}}  "
    if isinstance(entity, Broadcast):
        exchange = entity.exchange
        kind = exchange.type.value
        return [f"{lead}exchange={exchange.name}({kind}) broadcast: a copy to each worker"]
    extra = f" max_priority={entity.max_priority}" if entity.max_priority else ""
    bindings = entity.all_bindings or ()
    if not bindings:
        return [f"{lead}exchange=(default) key={entity.name}{extra}"]
    out = []
    for i, binding in enumerate(bindings):
        prefix = lead if i == 0 else " " * len(lead)
        out.append(f"{prefix}{_binding(binding)}{extra if i == 0 else ''}")
    return out


def _binding(binding: Binding) -> str:
    exchange = binding.exchange
    if isinstance(exchange, Exchange):
        text = f"exchange={exchange.name or '(default)'}({exchange.type.value})"
    else:
        text = f"exchange={exchange or '(default)'}"
    text += f" key={binding.routing_key}"
    if binding.arguments:
        text += " " + " ".join(f"{k}={v}" for k, v in binding.arguments.items())
    return text


def differing_settings(conf: Settings) -> list[tuple[str, str]]:
    """``(name, shown value)`` of each setting whose value differs from its default, in
    declaration order; URLs without their password, secret-looking options as ``***``."""
    defaults = Settings()
    out: list[tuple[str, str]] = []
    for field in fields(Settings):
        value = getattr(conf, field.name)
        if value == getattr(defaults, field.name):
            continue
        out.append((field.name, _shown(field.name, value)))
    return out


def _entity(value: Any) -> str:
    """A declared queue as one would write it: ``Queue('orders', max_priority=10)``."""
    if isinstance(value, Broadcast):
        return f"Broadcast({value.name!r})"
    if not isinstance(value, Queue):
        return repr(value)
    shown = [repr(value.name)]
    for option in ("exchange", "routing_key", "max_priority", "message_ttl", "expires"):
        given = getattr(value, option)
        if isinstance(given, Exchange):
            given = given.name
        if given is not None:
            shown.append(f"{option}={given!r}")
    if value.bindings:
        shown.append(f"bindings={[_binding(b) for b in value.bindings]!r}")
    return f"Queue({', '.join(shown)})"


def _shown(name: str, value: Any) -> str:
    if name in _URL_SETTINGS and isinstance(value, str):
        return redacted(value)
    if name == "task_queues":
        return f"[{', '.join(_entity(entity) for entity in value)}]"
    if isinstance(value, dict):
        return repr(
            {
                k: "***" if any(word in str(k).lower() for word in _SECRET_WORDS) else v
                for k, v in value.items()
            }
        )
    return repr(value)
