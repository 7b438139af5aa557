"""Orders: placed by a view, priced by a task, marked done by a signal receiver."""

from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)
    quantity = models.PositiveIntegerField()
    status = models.CharField(max_length=20, default="placed")
    total = models.IntegerField(null=True, blank=True)
    task_id = models.CharField(max_length=64, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.quantity} x {self.item} ({self.status})"
