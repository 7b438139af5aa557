"""Result documents: states, Celery-compatible JSON, and errors rebuilt on the caller's side."""

from __future__ import annotations

import dataclasses
import traceback

import pytest

from conveyor.errors import RemoteTaskError, TaskRevoked
from conveyor.results import ResultMeta, State


class Custom(Exception):
    pass


def failed(exc: BaseException) -> ResultMeta:
    try:
        raise exc
    except BaseException as caught:
        text = traceback.format_exc()
        return ResultMeta.failure("t", caught, text, worker="w", task="t")


def test_states_and_readiness() -> None:
    assert {s for s in State if s.ready} == {State.SUCCESS, State.FAILURE, State.REVOKED}
    assert State("RETRY") is State.RETRY


def test_json_round_trip_reads_celery_documents() -> None:
    meta = ResultMeta.success("t", {"a": 1}, worker="w@h", task="x", retries=2)
    back = ResultMeta.from_json(meta.to_json())
    assert back.date_done == pytest.approx(meta.date_done, abs=1e-5)
    assert dataclasses.replace(back, date_done=meta.date_done) == meta
    celery_doc = (
        b'{"status": "SUCCESS", "result": 4, "traceback": null, "children": [],'
        b' "date_done": "2024-05-01T10:00:00.123456", "task_id": "abc"}'
    )
    back = ResultMeta.from_json(celery_doc)
    assert (back.task_id, back.state, back.result) == ("abc", State.SUCCESS, 4)
    assert back.date_done is not None


def test_builtin_error_is_rebuilt_with_its_traceback() -> None:
    meta = ResultMeta.from_json(failed(ValueError("bad input", 3)).to_json())
    exc = meta.exception()
    assert type(exc) is ValueError
    assert exc.args == ("bad input", 3)
    assert "raise exc" in exc.remote_traceback  # type: ignore[attr-defined]
    assert any("Remote traceback" in note for note in exc.__notes__)


def test_error_of_an_imported_module_is_rebuilt() -> None:
    exc = ResultMeta.from_json(failed(Custom("x")).to_json()).exception()
    assert type(exc) is Custom


def test_unknown_error_type_becomes_remote_task_error() -> None:
    doc = ResultMeta(
        "t",
        State.FAILURE,
        {"exc_type": "Gone", "exc_module": "not_imported_anywhere", "exc_message": ["boom"]},
        "Traceback ...",
    )
    exc = doc.exception()
    assert isinstance(exc, RemoteTaskError)
    assert exc.exc_type == "not_imported_anywhere.Gone"
    assert exc.remote_traceback == "Traceback ..."
    assert "boom" in str(exc)


def test_revoked_becomes_task_revoked() -> None:
    meta = ResultMeta.failure(
        "t", TaskRevoked("expired"), None, state=State.REVOKED, worker="w", task="t"
    )
    assert isinstance(meta.exception(), TaskRevoked)


@pytest.mark.parametrize("state", [State.SUCCESS, State.STARTED, State.PENDING])
def test_no_exception_for_other_states(state: State) -> None:
    assert ResultMeta("t", state, 1).exception() is None
