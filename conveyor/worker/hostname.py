"""Worker names: ``name@%h`` with ``%h``, ``%n`` and ``%d`` expanded, as Celery does."""

from __future__ import annotations

import socket

__all__ = ["default_hostname", "expand_hostname"]


def expand_hostname(template: str, host: str | None = None) -> str:
    """Expand ``%h`` (the host name), ``%n`` (its first label), ``%d`` (the rest: the domain)
    and ``%%`` (a literal ``%``) in ``template``.
    """
    full = host if host is not None else socket.gethostname()
    name, _, domain = full.partition(".")
    out = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch == "%" and i + 1 < len(template):
            code = template[i + 1]
            expansion = {"h": full, "n": name, "d": domain, "%": "%"}.get(code)
            if expansion is not None:
                out.append(expansion)
                i += 2
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def default_hostname() -> str:
    """``conveyor@<host name>``."""
    return expand_hostname("conveyor@%h")
