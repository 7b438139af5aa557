"""The wire format: the message envelope, and task messages inside it."""

from conveyor.protocol.envelope import Envelope

__all__ = ["Envelope"]
