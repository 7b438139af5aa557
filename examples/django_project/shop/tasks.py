"""The shop's tasks, found by ``app.autodiscover_tasks()``."""

from conveyor.contrib.django import shared_task

PRICES = {"apple": 3, "pear": 5}


@shared_task(name="shop.price_order")
def price_order(item: str, quantity: int) -> int:
    """The order's total; an unknown item fails the task (KeyError)."""
    return PRICES[item] * quantity
