"""Every error conveyor raises on purpose, under one root.

    ConveyorError
    ├── ConfigurationError          a setting, URL or definition is wrong; fix the configuration
    │   ├── TopologyError           an exchange, queue or binding definition is invalid
    │   └── RoutingError            a route cannot be resolved (unknown queue, bad router)
    ├── ProtocolError               a message cannot be encoded or decoded
    │   └── SignatureError          a message is unsigned, or its signature is not trusted
    ├── TransportError              the broker refused or failed an operation
    │   ├── BrokerUnavailable       cannot connect, or the connection was lost for good
    │   ├── NotFound                the exchange or queue does not exist
    │   ├── PreconditionFailed      the entity exists with other arguments, or is in use
    │   └── Unroutable              a mandatory message reached no queue
    └── TaskError                   raised about a task or its result
        ├── NotRegistered           no task of that name is known here
        ├── ResultTimeout           a result did not arrive in time
        ├── ResultUnavailable       get() has no one result to wait for (ignore_result, broadcast)
        ├── TaskRevoked             the task was revoked or expired before it ran
        ├── TimeLimitExceeded       the task ran past its time limit
        ├── SoftTimeLimitExceeded   raised inside a task at its soft time limit; catch it to tidy up
        ├── Retry                   control flow: a bound task asked to be retried
        ├── MaxRetriesExceeded      a task asked to be retried once more than max_retries
        ├── RemoteTaskError         the task failed on a worker and its type is not importable here
        └── ChordError              a chord's header task failed, so its body did not run

    ConfigurationWarning            (a warning, not an error) a setting was ignored; it names it

Errors from client libraries are mapped to these at the transport boundary with
``raise ... from exc``, so callers never need to import a broker client library to handle them.
Each message says what happened and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "ChordError",
    "ConfigurationError",
    "ConfigurationWarning",
    "ConveyorError",
    "MaxRetriesExceeded",
    "NotFound",
    "NotRegistered",
    "PreconditionFailed",
    "ProtocolError",
    "RemoteTaskError",
    "ResultTimeout",
    "ResultUnavailable",
    "Retry",
    "RoutingError",
    "SignatureError",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskRevoked",
    "TimeLimitExceeded",
    "TopologyError",
    "TransportError",
    "Unroutable",
]


class ConveyorError(Exception):
    """The root of every error conveyor raises on purpose."""


class ConfigurationError(ConveyorError):
    """A setting, URL or definition is wrong; the message names it and the fix."""


class ConfigurationWarning(UserWarning):
    """A setting was ignored (an unknown name, an option with no effect); the message names it
    and, where there is one, the closest known name."""


class TopologyError(ConfigurationError):
    """An exchange, queue or binding definition is invalid."""


class RoutingError(ConfigurationError):
    """A route cannot be resolved: an unknown queue, a router that fails, a bad route value."""


class ProtocolError(ConveyorError):
    """A message cannot be encoded or decoded (bad envelope, unknown content type, bad body)."""


class TransportError(ConveyorError):
    """The broker refused or failed an operation."""


class BrokerUnavailable(TransportError):
    """The broker cannot be reached, or the connection was lost and could not be restored."""


class NotFound(TransportError):
    """The exchange or queue named in an operation does not exist."""


class PreconditionFailed(TransportError):
    """The entity exists with different arguments, or is in use / not empty where that matters."""


class Unroutable(TransportError):
    """A message published with ``mandatory=True`` reached no queue."""

    def __init__(self, message: str, *, exchange: str, routing_key: str) -> None:
        super().__init__(message)
        self.exchange = exchange
        self.routing_key = routing_key


class TaskError(ConveyorError):
    """An error about a task or its result."""


class NotRegistered(TaskError):
    """No task of that name is registered in this process."""


class ResultTimeout(TaskError):
    """The result did not arrive within the timeout given to ``get``."""


class ResultUnavailable(TaskError):
    """``get`` was asked for a result that will never be one: the task was sent with
    ``ignore_result`` (no worker stores it), or to a broadcast queue (each worker stores its
    own: ``collect`` them)."""


class TaskRevoked(TaskError):
    """The task was revoked, or expired before a worker ran it."""


class TimeLimitExceeded(TaskError):
    """The task ran longer than its ``time_limit`` and was stopped."""


class SoftTimeLimitExceeded(TaskError):
    """Raised inside a running task when it passes its ``soft_time_limit``: the task may catch
    it to tidy up before the (hard) ``time_limit``; uncaught, the run fails with it."""


class Retry(TaskError):
    """Raised by ``Task.retry`` to end the current run; the worker re-publishes the task."""

    def __init__(
        self, message: str = "", *, countdown: float | None = None, exc: BaseException | None = None
    ) -> None:
        super().__init__(message or "task asked to be retried")
        self.countdown = countdown
        self.exc = exc


class MaxRetriesExceeded(TaskError):
    """A task called ``retry`` after ``max_retries`` retries, without an ``exc`` to raise."""


class RemoteTaskError(TaskError):
    """A task failed on a worker with an exception type that cannot be rebuilt here.

    ``exc_type`` names the original type; ``remote_traceback`` is its traceback text.
    """

    def __init__(self, message: str, *, exc_type: str, remote_traceback: str | None) -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback


class SignatureError(ProtocolError):
    """A message is unsigned, signed by a key not trusted here, or changed since it was signed
    (message signing, ``security_*`` settings); the worker dead-letters it with this reason."""


class ChordError(TaskError):
    """A chord's header task failed (the message names it), so the body was not run."""
