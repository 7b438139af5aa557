"""Why a worker refuses a message: the reason it writes into the dead-letter headers.

The worker dead-letters any message it cannot decode (or check), whatever the exception, so that
no message stays unacked holding a prefetch slot; the reason names the real cause, for
``conveyor dead-letters`` and for whoever reads the log.
"""

from __future__ import annotations

import logging
from typing import Any

from conveyor.errors import ConveyorError, ProtocolError, SignatureError
from conveyor.protocol.describe import brief
from conveyor.protocol.envelope import Envelope

__all__ = ["named_task", "refusal_reason", "unsettled_reason"]

log = logging.getLogger("conveyor.worker")


def _cause(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, ConveyorError):
        return text
    # Not one of conveyor's own errors: a defect somewhere, so the type says what happened.
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def refusal_reason(exc: BaseException) -> str:
    """The dead-letter reason for a message whose decoding (or signature check) raised ``exc``.

    A ProtocolError is the expected case: its text says what is wrong with the message. Any
    other exception is a decoder defect; it is logged with its traceback as well.
    """
    if isinstance(exc, SignatureError):
        return f"refused: {exc}"
    if not isinstance(exc, ProtocolError):
        log.error("decoding a message raised %s", type(exc).__name__, exc_info=exc)
    return f"undecodable message: {_cause(exc)}"


def unsettled_reason(exc: BaseException) -> str:
    """The dead-letter reason for a message that could not be revoked or postponed."""
    if not isinstance(exc, ConveyorError):
        log.error("settling a message without running it raised", exc_info=exc)
    return f"could not postpone or revoke the task: {_cause(exc)}"


def named_task(envelope: Envelope) -> str | None:
    """The task name a message's headers give, if it is a string (for the log line)."""
    header: Any = envelope.headers.get("task")
    return header if isinstance(header, str) else None if header is None else brief(header)
