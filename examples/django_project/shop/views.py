"""Place an order (POST item, quantity) and look at it."""

import uuid

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from shop.models import Order
from shop.tasks import price_order


@csrf_exempt
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    task_id = uuid.uuid4().hex
    with transaction.atomic():
        order = Order.objects.create(
            item=request.POST["item"], quantity=int(request.POST["quantity"]), task_id=task_id
        )
        # sent only if the order is really saved: the worker can then find it
        price_order.apply_async_on_commit((order.item, order.quantity), task_id=task_id)
    return JsonResponse({"order": order.id, "task_id": task_id}, status=201)


def order_status(request: HttpRequest, order_id: int) -> JsonResponse:
    order = get_object_or_404(Order, pk=order_id)
    return JsonResponse({"order": order.id, "status": order.status, "total": order.total})
