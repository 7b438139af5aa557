"""Signed results: a worker that signs messages signs every result state it stores, and a
caller that signs refuses results that are unsigned or not signed by a key it trusts.

The signature covers the task id, state, result (value or error), traceback, worker hostname,
task name and retries (not ``date_done``, which backends rewrite as text). It travels in the
result document as ``"signature": [key id, base64]``, which Celery's readers ignore.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import orjson

from conveyor.errors import ProtocolError
from conveyor.results.meta import ResultMeta

if TYPE_CHECKING:
    from conveyor.protocol.signing import MessageSigning

__all__ = ["check_result", "sign_result"]

_VERSION = "conveyor-result-signature-1"


def _content(meta: ResultMeta) -> bytes:
    try:
        return orjson.dumps(
            [
                _VERSION,
                meta.task_id,
                meta.state.value,
                meta.result,
                meta.traceback,
                meta.worker,
                meta.task,
                meta.retries,
            ],
            option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
        )
    except TypeError as exc:
        raise ProtocolError(
            f"the result of task {meta.task_id} cannot be stored as JSON: {exc}; return only "
            "JSON values (str, int, float, bool, None, lists and dicts)"
        ) from exc


def sign_result(meta: ResultMeta, signing: MessageSigning) -> ResultMeta:
    """``meta`` with its signature; ProtocolError for a value JSON cannot hold."""
    return replace(meta, signature=list(signing.signature(_content(meta))))


def check_result(meta: ResultMeta, signing: MessageSigning) -> ResultMeta:
    """``meta`` if a trusted key signed it as it is; SignatureError saying why not."""
    signature = meta.signature
    signer, encoded = (
        signature if isinstance(signature, list) and len(signature) == 2 else (signature, "")
    )
    signing.check(
        signer,
        encoded if signature is not None else None,
        _content(meta),
        what=f"result of task {meta.task_id}",
        fix="the worker that stored it does not sign (set the same security_* settings there)",
    )
    return meta
