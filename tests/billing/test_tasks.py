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


def test_worker_opens_and_finalizes_invoices(celery_worker) -> None:
    meter = MeterFactory.create()
    customer = CustomerFactory.create()
    price = services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.METERED,
        pricing_model=Price.Model.PER_UNIT,
        meter=meter,
        unit_amount_decimal=Decimal(250),
    )
    # Daily periods whose last one ended 30 minutes ago: inside the one-hour grace period,
    # whatever the time of day the test runs at.
    now = timezone.now().replace(second=0, microsecond=0)
    start = now - timedelta(days=3, minutes=30)
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
    while (
        Invoice.objects.filter(status=Invoice.Status.FINALIZED).count() < 2
        or Invoice.objects.count() < 3
    ):
        if time.monotonic() > deadline:
            pytest.fail(f"No invoices finalized by the worker:\n{celery_worker.log[-3000:]}")
        time.sleep(0.3)
    invoices = list(Invoice.objects.order_by("period_start"))
    assert [i.period_start for i in invoices] == [start + timedelta(days=n) for n in range(3)]
    first = invoices[0]
    assert first.status == Invoice.Status.FINALIZED
    assert first.total == 1000
    # The last period ended 30 minutes ago: it stays a draft until its hour of grace is over.
    last = invoices[-1]
    assert last.status == Invoice.Status.DRAFT
