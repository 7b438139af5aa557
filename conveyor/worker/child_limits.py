"""The processes pool's per-child limits: the Worker's arguments over the settings, checked."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from conveyor.config import Settings
from conveyor.errors import ConfigurationError

__all__ = ["ChildLimits", "child_limits"]

log = logging.getLogger("conveyor.worker")


@dataclass(frozen=True, slots=True)
class ChildLimits:
    """Tasks a child may run and KiB of resident memory it may use before it is replaced
    (None: no limit); ``explicit`` when they came as arguments (the command line)."""

    max_tasks: int | None
    max_memory: int | None
    explicit: bool

    def values(self) -> tuple[int | None, int | None]:
        """``(max_tasks, max_memory)``, as ProcessPool takes them."""
        return self.max_tasks, self.max_memory

    def refuse(self, pool: str) -> None:
        """For a pool without children: ConfigurationError if the limits were asked for
        explicitly; a warning if they come from the settings."""
        if self.max_tasks is None and self.max_memory is None:
            return
        text = (
            "max tasks/memory per child apply to the processes pool only, and this worker "
            f"uses the {pool} pool"
        )
        if self.explicit:
            raise ConfigurationError(f"{text}: add --pool processes or leave them out")
        log.warning("%s: the worker_max_*_per_child settings are ignored", text)


def child_limits(conf: Settings, max_tasks: int | None, max_memory: int | None) -> ChildLimits:
    """The limits a worker uses: ``max_tasks``/``max_memory`` if given, else the settings.
    ConfigurationError for a value below 1."""
    explicit = max_tasks is not None or max_memory is not None
    tasks = max_tasks if max_tasks is not None else conf.worker_max_tasks_per_child
    memory = max_memory if max_memory is not None else conf.worker_max_memory_per_child
    for name, value in (("max_tasks_per_child", tasks), ("max_memory_per_child", memory)):
        if value is not None and value < 1:
            raise ConfigurationError(f"{name} must be 1 or more, got {value}")
    return ChildLimits(tasks, memory, explicit)
