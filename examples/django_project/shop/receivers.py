"""Callbacks when a task's result lands in the database (they run where it is stored: the worker)."""

from typing import Any

from django.dispatch import receiver

from conveyor.contrib.django import task_failed, task_succeeded
from shop.models import Order


@receiver(task_succeeded)
def order_priced(sender: Any, task_id: str, task_name: str, result: Any, **_: Any) -> None:
    if task_name == "shop.price_order":
        Order.objects.filter(task_id=task_id).update(status="priced", total=result)


@receiver(task_failed)
def order_failed(sender: Any, task_id: str, task_name: str, **_: Any) -> None:
    if task_name == "shop.price_order":
        Order.objects.filter(task_id=task_id).update(status="failed")
