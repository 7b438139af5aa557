"""The worker: consumes queues, runs tasks in a pool, stores results, acks, dead-letters."""

from conveyor.worker.buffer import PriorityBuffer
from conveyor.worker.hostname import expand_hostname
from conveyor.worker.middleware import Middleware
from conveyor.worker.outcome import Outcome
from conveyor.worker.worker import DEAD_LETTER_HEADERS, Worker

__all__ = [
    "DEAD_LETTER_HEADERS",
    "Middleware",
    "Outcome",
    "PriorityBuffer",
    "Worker",
    "expand_hostname",
]
