"""The errors conveyor and Celery share cross as each side's own types, read by Celery's own
result code (its backend's ``exception_to_python``) and by conveyor's."""

from __future__ import annotations

import billiard.exceptions
import celery.exceptions
import pytest
from celery import Celery

from conveyor.errors import MaxRetriesExceeded, NotRegistered, TaskRevoked, TimeLimitExceeded
from conveyor.results.meta import exception_from_result, exception_to_result

PAIRS = [
    (TaskRevoked("revoked"), celery.exceptions.TaskRevokedError),
    (TimeLimitExceeded("too slow"), billiard.exceptions.TimeLimitExceeded),
    (NotRegistered("no such task"), celery.exceptions.NotRegistered),
    (MaxRetriesExceeded("gave up"), celery.exceptions.MaxRetriesExceededError),
]


@pytest.fixture(scope="module")
def celery_app() -> Celery:
    return Celery("reader", backend="cache+memory://", set_as_current=False)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_conveyor_errors_reach_celery_as_celerys_types(
    celery_app: Celery, ours: BaseException, theirs: type[BaseException]
) -> None:
    rebuilt = celery_app.backend.exception_to_python(exception_to_result(ours))
    assert type(rebuilt) is theirs
    assert str(ours) in str(rebuilt)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_celery_errors_reach_conveyor_as_conveyors_types(
    celery_app: Celery, ours: BaseException, theirs: type[BaseException]
) -> None:
    stored = celery_app.backend.prepare_exception(theirs("from celery"), "json")
    rebuilt = exception_from_result(stored, None)
    assert type(rebuilt) is type(ours)
    assert "from celery" in str(rebuilt)


def test_celerys_own_module_for_time_limits_is_read_too() -> None:
    stored = {
        "exc_type": "TimeLimitExceeded",
        "exc_module": "celery.exceptions",
        "exc_message": ["1.0"],
    }
    assert isinstance(exception_from_result(stored, None), TimeLimitExceeded)


def test_a_subclass_keeps_its_own_name() -> None:
    class Mine(TaskRevoked):
        pass

    described = exception_to_result(Mine("x"))
    assert (described["exc_module"], described["exc_type"]) == (__name__, Mine.__qualname__)
