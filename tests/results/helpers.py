"""Small helpers the result backend tests share (not fixtures)."""

from __future__ import annotations

from typing import Any

from conveyor.config import Settings
from conveyor.transports.base import Transport


class NoBrokerHost:
    """A backend host for backends that need no broker: ``settings`` over the defaults, and
    asking it for the broker fails the test."""

    def __init__(self, **settings: Any) -> None:
        self.conf = Settings()
        self.conf.update_from(settings)

    async def atransport(self) -> Transport:
        raise AssertionError("this backend must not need the broker")
