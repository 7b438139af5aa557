"""Signed task messages on every broker: a worker runs what a trusted key signed (its own
retries included) and dead-letters the rest with the reason (issue 15, signing)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from conveyor.app import App
from conveyor.errors import SignatureError
from conveyor.protocol.envelope import Envelope
from conveyor.protocol.signing import MessageSigning
from conveyor.results.base import StoreRequest
from conveyor.results.meta import ResultMeta
from conveyor.results.signed import sign_result
from conveyor.routing.entities import Queue
from conveyor.task import Task
from conveyor.worker import Worker
from tests.conftest import redis_namespace
from tests.worker.test_poison import _drain


def _pem(key: ed25519.Ed25519PrivateKey, public: bool = False) -> str:
    if public:
        data = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return data.decode()


@pytest.fixture(params=["memory", "sqlite", "amqp", "redis"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(broker, result backend) of one kind: results go through each backend's own storage."""
    kind = request.param
    if kind == "memory":
        return f"memory://signing-{uuid.uuid4().hex}", f"memory://results-{uuid.uuid4().hex}"
    if kind == "sqlite":
        return f"sqlite://{tmp_path}/broker.db", f"sqlite://{tmp_path}/results.db"
    if kind == "amqp":
        return str(request.getfixturevalue("rabbitmq_url")), "rpc://"
    return redis_namespace(request), str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def apps(urls: tuple[str, str]) -> AsyncIterator[tuple[App, App, str, str]]:
    """(web client, remote worker app, its queue, its dead-letter queue), keys of their own."""
    web_key, remote_key = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    suffix = uuid.uuid4().hex[:8]
    queue, dead = f"signed-{suffix}", f"signed-dead-{suffix}"
    broker, results = urls
    web = App(
        "web",
        broker=broker,
        result_backend=results,
        config={
            "security_key": _pem(web_key),
            # The web service reads results, which the remote worker signs.
            "security_trusted_keys": {"remote": _pem(remote_key, public=True)},
        },
    )
    web.conf.task_routes = {"remote.*": {"queue": queue}}
    remote = App(
        "remote",
        broker=broker,
        result_backend=results,
        config={
            "security_key": _pem(remote_key),
            "security_trusted_keys": {"web": _pem(web_key, public=True)},
            "task_dead_letter_queue": dead,
        },
    )

    @remote.task(name="remote.add")
    def add(x: int, y: int) -> int:
        return x + y

    @remote.task(name="remote.flaky", bind=True)
    def flaky(self: Task) -> int:
        if self.request.retries < 1:
            raise self.retry(countdown=0.01)
        return self.request.retries

    yield web, remote, queue, dead
    transport = await web.atransport()
    for name in (queue, dead):
        await transport.delete_queue(name)
    await web.aclose()
    await remote.aclose()


async def test_signed_tasks_run_and_the_rest_are_dead_lettered(
    apps: tuple[App, App, str, str],
) -> None:
    web, remote, queue, dead = apps
    transport = await web.atransport()
    await transport.declare_queue(Queue(queue))
    await transport.declare_queue(Queue(dead))
    body = orjson.dumps([[1, 2], {}, None])
    unsigned = Envelope(body=body, headers={"task": "remote.add", "id": "unsigned"})
    stranger = MessageSigning.from_keys("web", ed25519.Ed25519PrivateKey.generate(), {})
    assert web.signing is not None
    tampered = web.signing.sign(
        Envelope(body=body, headers={"task": "remote.add", "id": "tampered"})
    )
    tampered = Envelope(body=orjson.dumps([[1, 1000], {}, None]), headers=tampered.headers)
    refused = {
        "unsigned": (unsigned, "refused: unsigned message"),
        "impostor": (
            stranger.sign(Envelope(body=body, headers={"task": "remote.add", "id": "impostor"})),
            "refused: bad signature by key 'web' on the message",
        ),
        "untrusted": (
            MessageSigning.from_secret(b"k" * 32).sign(
                Envelope(body=body, headers={"task": "remote.add", "id": "untrusted"})
            ),
            "'shared-secret', which is not trusted here",
        ),
        "tampered": (tampered, "refused: bad signature by key 'web' on the message"),
    }
    for envelope, _ in refused.values():
        await transport.publish(envelope, routing_key=queue)
    worker = Worker(remote, queues=[queue], concurrency=1, shutdown_grace=1.0)
    await worker.start()
    try:
        added = await web.asend_task("remote.add", [2, 3])
        retried = await web.asend_task("remote.flaky")
        assert await added.aget(timeout=20) == 5
        assert await retried.aget(timeout=20) == 1  # the worker signed the retry it sent
        letters = await _drain(transport, dead, len(refused), timeout=20)
    finally:
        await worker.stop()
    reasons = {
        str(e.headers["id"]): str(e.headers["x-conveyor-dead-letter-reason"]) for e in letters
    }
    assert set(reasons) == set(refused)
    for task_id, (_, words) in refused.items():
        assert words in reasons[task_id], reasons[task_id]


async def test_results_are_signed_and_forged_ones_refused(
    apps: tuple[App, App, str, str],
) -> None:
    web, remote, queue, _ = apps
    worker = Worker(remote, queues=[queue], concurrency=1, shutdown_grace=1.0)
    await worker.start()
    try:
        sent = await web.asend_task("remote.add", [20, 22])
        assert await sent.aget(timeout=20) == 42
        stored = sent._meta
        assert stored is not None
        assert stored.signature[0] == "remote"
    finally:
        await worker.stop()
    if web.conf.result_backend == "rpc://":
        return  # results reach only the caller's reply queue: nobody else can store one there
    backend = await web.abackend()
    forged_id = f"forged-{uuid.uuid4().hex}"
    await backend.store(StoreRequest(ResultMeta.success(forged_id, 1, worker="x", task="t")))
    with pytest.raises(SignatureError, match=f"unsigned result of task {forged_id}"):
        await web.result(forged_id).aget(timeout=5)
    stranger = MessageSigning.from_secret(b"z" * 32)
    other_id = f"forged-{uuid.uuid4().hex}"
    meta = sign_result(ResultMeta.success(other_id, 1, worker="x", task="t"), stranger)
    await backend.store(StoreRequest(meta))
    with pytest.raises(SignatureError, match="'shared-secret', which is not trusted here"):
        await web.result(other_id).aget(timeout=5)
    changed_id = f"forged-{uuid.uuid4().hex}"
    assert remote.signing is not None
    meta = sign_result(ResultMeta.success(changed_id, 1, worker="x", task="t"), remote.signing)
    await backend.store(StoreRequest(replace(meta, result=1000)))
    with pytest.raises(SignatureError, match="bad signature by key 'remote'"):
        await web.result(changed_id).aget(timeout=5)


async def test_sync_sends_are_signed_too(apps: tuple[App, App, str, str]) -> None:
    """``send_task`` from a thread (RabbitMQ's from-thread fast path included) signs as well."""
    web, remote, queue, _ = apps
    worker = Worker(remote, queues=[queue], concurrency=1, shutdown_grace=1.0)
    await worker.start()
    try:

        def send_twice() -> list[int]:
            return [web.send_task("remote.add", [n, 1]).get(timeout=20) for n in (1, 2)]

        assert await asyncio.to_thread(send_twice) == [2, 3]
    finally:
        await worker.stop()
