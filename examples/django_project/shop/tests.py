"""The Django integration, under Django's own test runner, on the project's real database
(PostgreSQL, or SQLite with CONVEYOR_EXAMPLE_DB=sqlite): settings, autodiscovery, the ORM
result backend, the admin page, the signals and on-commit sending.

Run: ``python manage.py test shop`` (tests/contrib/test_django.py runs it on both databases).
"""

import asyncio
import time
import uuid
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import TransactionTestCase

from conveyor.contrib.django import DjangoTask, task_failed, task_succeeded
from conveyor.contrib.django.backend import DjangoBackend
from conveyor.contrib.django.models import TaskResult
from conveyor.errors import ResultTimeout
from conveyor.results import ResultMeta, State, StoreRequest, open_backend
from proj import app
from shop.models import Order
from shop.tasks import price_order


class _Host:
    conf = app.conf

    async def atransport(self) -> Any:
        raise AssertionError("the django:// backend needs no broker")


def backend(url: str = "django://") -> DjangoBackend:
    made = open_backend(url, host=_Host())
    assert isinstance(made, DjangoBackend)
    return made


def ok(task_id: str, value: object) -> StoreRequest:
    return StoreRequest(ResultMeta.success(task_id, value, worker="w1@host", task="shop.t"))


def failed(task_id: str) -> StoreRequest:
    try:
        raise ValueError("out of pears")
    except ValueError as exc:
        meta = ResultMeta.failure(task_id, exc, "Traceback...", worker="w1@host", task="shop.t")
    return StoreRequest(meta)


class SettingsAndDiscovery(TransactionTestCase):
    def test_settings_are_read_under_the_conveyor_prefix(self) -> None:
        self.assertEqual(app.conf.task_default_queue, "shop")
        self.assertEqual(app.conf.result_backend, "django://")
        self.assertEqual(app.conf.result_expires, 7 * 24 * 3600)

    def test_autodiscovery_registers_shared_tasks_on_the_project_app(self) -> None:
        self.assertIn("shop.price_order", app.tasks)
        self.assertIs(app.tasks["shop.price_order"], price_order)
        self.assertIsInstance(price_order, DjangoTask)
        self.assertIs(price_order.app, app)
        self.assertEqual(price_order("pear", 2), 10)


class OrmBackend(TransactionTestCase):
    def test_store_get_wait_forget_and_cleanup(self) -> None:
        async def scenario() -> None:
            async with backend() as results:
                started = ResultMeta("r1", State.STARTED, worker="w1@host", task="shop.t")
                await results.store(StoreRequest(started))
                got = await results.get("r1")
                assert got is not None and got.state is State.STARTED
                await results.store(ok("r1", {"total": 10}))
                meta = await results.wait("r1", timeout=5)
                assert (meta.state, meta.result) == (State.SUCCESS, {"total": 10})
                with self.assertRaises(ResultTimeout):
                    await results.wait("never", timeout=0.2)
                old = ResultMeta("old", State.SUCCESS, result=1, date_done=time.time() - 3600)
                await results.store(StoreRequest(old))
                assert await results.cleanup(older_than=time.time() - 60) == 1
                await results.forget("r1")
                assert await results.get("r1") is None

        asyncio.run(scenario())
        self.assertEqual(TaskResult.objects.count(), 0)

    def test_rows_are_readable_through_the_model(self) -> None:
        async def store() -> None:
            async with backend() as results:
                await results.store(ok("m1", [1, 2]))
                await results.store(StoreRequest(ok("b1", "a").meta, per_worker=True))
                await results.store(
                    StoreRequest(
                        ResultMeta.success("b1", "b", worker="w2@host", task="t"), per_worker=True
                    )
                )

        asyncio.run(store())
        row = TaskResult.objects.get(task_id="m1")
        self.assertEqual((row.state, row.result, row.task_name), ("SUCCESS", [1, 2], "shop.t"))
        self.assertEqual(row.ran_on, "w1@host")
        self.assertIsNotNone(row.date_done)
        self.assertEqual(TaskResult.objects.filter(task_id="b1").count(), 2)

    def test_a_waiter_is_woken_by_a_store_from_another_backend(self) -> None:
        # On PostgreSQL the wake-up is NOTIFY (the fallback poll is 30 s, so only NOTIFY passes);
        # elsewhere another process's waiter reads again every poll seconds.
        postgres = connection.vendor == "postgresql"
        url = "django://default?poll=30" if postgres else "django://default?poll=0.2"

        async def scenario() -> float:
            async with backend(url) as reader, backend(url) as writer:
                waiting = asyncio.create_task(reader.wait("x1", timeout=20))
                await asyncio.sleep(0.3)
                began = time.monotonic()
                await writer.store(ok("x1", 42))
                assert (await waiting).result == 42
                return time.monotonic() - began

        self.assertLess(asyncio.run(scenario()), 2.0)


class AdminPage(TransactionTestCase):
    def test_results_are_listed_and_filtered_by_state_and_task(self) -> None:
        async def store() -> None:
            async with backend() as results:
                await results.store(ok("good-one", 1))
                await results.store(failed("bad-one"))

        asyncio.run(store())
        user = User.objects.create_superuser("admin", "admin@example.com", "pw")
        self.client.force_login(user)
        page = self.client.get("/admin/conveyor/taskresult/")
        self.assertEqual(page.status_code, 200)
        text = page.content.decode()
        self.assertIn("good-one", text)
        self.assertIn("bad-one", text)
        self.assertIn("By state", text)
        self.assertIn("By task name", text)
        only_failed = self.client.get("/admin/conveyor/taskresult/?state__exact=FAILURE")
        text = only_failed.content.decode()
        self.assertIn("bad-one", text)
        self.assertNotIn("good-one", text)
        row = TaskResult.objects.get(task_id="bad-one")
        detail = self.client.get(f"/admin/conveyor/taskresult/{row.pk}/change/")
        self.assertEqual(detail.status_code, 200)
        self.assertIn("out of pears", detail.content.decode())


class Signals(TransactionTestCase):
    def test_succeeded_and_failed_are_sent_when_results_land(self) -> None:
        heard: list[tuple[str, dict[str, Any]]] = []

        def on_success(sender: Any, **kwargs: Any) -> None:
            heard.append(("succeeded", kwargs))

        def on_failure(sender: Any, **kwargs: Any) -> None:
            heard.append(("failed", kwargs))

        task_succeeded.connect(on_success)
        task_failed.connect(on_failure)
        try:

            async def store() -> None:
                async with backend() as results:
                    await results.store(StoreRequest(ResultMeta("s0", State.STARTED)))
                    await results.store(ok("s1", {"n": 1}))
                    await results.store(failed("f1"))

            asyncio.run(store())
        finally:
            task_succeeded.disconnect(on_success)
            task_failed.disconnect(on_failure)
        self.assertEqual([kind for kind, _ in heard], ["succeeded", "failed"])
        success = heard[0][1]
        self.assertEqual(
            (success["task_id"], success["task_name"], success["result"]),
            ("s1", "shop.t", {"n": 1}),
        )
        failure = heard[1][1]
        self.assertEqual(failure["task_id"], "f1")
        self.assertIsInstance(failure["error"], ValueError)
        self.assertEqual(str(failure["error"]), "out of pears")


class OnCommit(TransactionTestCase):
    def setUp(self) -> None:
        self.queue = f"on-commit-{uuid.uuid4().hex}"
        self.broker = f"memory://{self.queue}"
        self.saved = (app.conf.broker_url, app.conf.task_default_queue)
        app.close()
        app.conf.broker_url = self.broker
        app.conf.task_default_queue = self.queue

    def tearDown(self) -> None:
        app.close()
        app.conf.broker_url, app.conf.task_default_queue = self.saved

    def ready(self) -> int:
        async def count() -> int:
            transport = await app.atransport()
            try:
                return (await transport.queue_stats(self.queue)).ready
            except Exception:
                return 0

        return app.run_sync(count())

    def test_sent_only_after_the_transaction_commits(self) -> None:
        with transaction.atomic():
            Order.objects.create(item="apple", quantity=1)
            price_order.delay_on_commit("apple", 1)
            app.send_task_on_commit("shop.price_order", ("pear", 2))
            self.assertEqual(self.ready(), 0)
        app.flush()  # a sync send may return before its confirm (pipelined): wait for both
        self.assertEqual(self.ready(), 2)

    def test_never_sent_for_a_rolled_back_transaction(self) -> None:
        class Abort(Exception):
            pass

        with self.assertRaises(Abort), transaction.atomic():
            Order.objects.create(item="apple", quantity=1)
            price_order.delay_on_commit("apple", 1)
            price_order.apply_async_on_commit(("apple", 2), task_id="rolled-back")
            raise Abort
        self.assertEqual(self.ready(), 0)
        self.assertEqual(Order.objects.count(), 0)

    def test_the_view_sends_after_saving_the_order(self) -> None:
        response = self.client.post("/orders/", {"item": "pear", "quantity": 3})
        self.assertEqual(response.status_code, 201)
        self.assertEqual(self.ready(), 1)
        order = Order.objects.get(pk=response.json()["order"])
        self.assertEqual(order.task_id, response.json()["task_id"])
