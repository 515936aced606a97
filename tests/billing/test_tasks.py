"""The periodic task on a real Celery worker: drafts for ended periods, finalized after the
grace period."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services, tasks
from billing.models import Invoice, Price
from tests.billing.conftest import record_usage
from tests.factories import CustomerFactory, MeterFactory

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_worker_opens_and_finalizes_invoices(celery_worker) -> None:  # type: ignore[no-untyped-def]
    meter = MeterFactory()
    customer = CustomerFactory()
    price = services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.METERED,
        pricing_model=Price.Model.PER_UNIT,
        meter=meter,
        unit_amount_decimal=Decimal(250),
    )
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=3)
    services.subscription_create(
        actor=None,
        customer=customer,
        items=[services.ItemInput(price=price)],
        interval="day",
        start_date=start,
    )
    record_usage(meter, customer, 4, start + timedelta(hours=1))

    tasks.invoices_advance.delay()
    deadline = time.monotonic() + 60
    while Invoice.objects.filter(status=Invoice.Status.FINALIZED).count() < 2:
        if time.monotonic() > deadline:
            pytest.fail(f"No invoices finalized by the worker:\n{celery_worker.log[-3000:]}")
        time.sleep(0.3)
    invoices = list(Invoice.objects.order_by("period_start"))
    assert [i.period_start for i in invoices] == [start + timedelta(days=n) for n in range(3)]
    first = invoices[0]
    assert first.status == Invoice.Status.FINALIZED
    assert first.total == 1000
    # The last period ended at 00:00 today; it is finalized only once its hour of grace is over.
    last = invoices[-1]
    expected = Invoice.Status.FINALIZED if timezone.now() >= today + timedelta(hours=1) else "draft"
    deadline = time.monotonic() + 30
    while last.status != expected and time.monotonic() < deadline:
        time.sleep(0.3)
        last.refresh_from_db()
    assert last.status == expected
