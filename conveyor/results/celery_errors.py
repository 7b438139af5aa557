"""The error types conveyor and Celery share, under each side's own name on the wire.

A stored failure names its exception by module and type (``exc_module``, ``exc_type``), and each
side rebuilds it from those. For the errors both have, conveyor writes Celery's names, so a
Celery caller's ``except TaskRevokedError`` catches a revocation by a conveyor worker, and reads
Celery's names as its own types, so a conveyor caller's ``except TaskRevoked`` catches one by a
Celery worker.

=====================  ===========================================
conveyor               Celery
=====================  ===========================================
TaskRevoked            celery.exceptions.TaskRevokedError
TimeLimitExceeded      billiard.exceptions.TimeLimitExceeded
                       (also read as celery.exceptions.TimeLimitExceeded)
NotRegistered          celery.exceptions.NotRegistered
MaxRetriesExceeded     celery.exceptions.MaxRetriesExceededError
=====================  ===========================================
"""

from __future__ import annotations

from collections.abc import Mapping

from conveyor.errors import MaxRetriesExceeded, NotRegistered, TaskRevoked, TimeLimitExceeded

__all__ = ["CELERY_NAMES", "CONVEYOR_TYPES", "celery_name", "conveyor_type"]

CELERY_NAMES: Mapping[type[BaseException], tuple[str, str]] = {
    TaskRevoked: ("celery.exceptions", "TaskRevokedError"),
    TimeLimitExceeded: ("billiard.exceptions", "TimeLimitExceeded"),
    NotRegistered: ("celery.exceptions", "NotRegistered"),
    MaxRetriesExceeded: ("celery.exceptions", "MaxRetriesExceededError"),
}

CONVEYOR_TYPES: Mapping[tuple[str, str], type[BaseException]] = {
    **{name: cls for cls, name in CELERY_NAMES.items()},
    ("celery.exceptions", "TimeLimitExceeded"): TimeLimitExceeded,
}


def celery_name(cls: type[BaseException]) -> tuple[str, str] | None:
    """(module, type name) Celery gives ``cls`` when it is one of the shared errors (exactly
    that type, not a subclass a user defined), else None."""
    return CELERY_NAMES.get(cls)


def conveyor_type(module: str, name: str) -> type[BaseException] | None:
    """conveyor's type for Celery's ``module.name`` when it is one of the shared errors."""
    return CONVEYOR_TYPES.get((module, name))
