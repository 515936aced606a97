"""Event pages: the explorer, manual entry, cancellation, including their htmx partials."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from events.ingestion import EventInput, event_batch_create, meter_events_ingest
from events.models import EventBatch, EventRejection, MeterEvent
from tests.factories import CustomerFactory, MeterFactory, UploadFactory

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def meter():
    return MeterFactory(display_name="API calls", event_name="api_calls")


@pytest.fixture
def customer():
    return CustomerFactory(external_id="cus_acme", name="Acme")


def send(meter, customer, values, *, batch=None, identifiers=None, minutes_ago=5):
    batch = batch or event_batch_create(source=EventBatch.Source.API)
    events = [
        EventInput(
            event_name=meter.event_name,
            payload={"stripe_customer_id": customer.external_id, "value": str(value)},
            identifier=identifiers[i] if identifiers else None,
            timestamp=timezone.now() - timedelta(minutes=minutes_ago),
        )
        for i, value in enumerate(values)
    ]
    return meter_events_ingest(events=events, batch=batch)


# --- Explorer --------------------------------------------------------------------------------
def test_explorer_lists_newest_first_with_links(support_client, meter, customer):
    send(meter, customer, [1], identifiers=["first"])
    send(meter, customer, [2], identifiers=["second"])
    response = support_client.get(reverse("events:event_list"))
    html = response.content.decode()
    assert response.status_code == 200
    assert html.index("second") < html.index("first")
    assert customer.get_absolute_url() in html
    assert meter.get_absolute_url() in html
    assert "event_cancel" not in html and "/cancel/" not in html  # support reads only


def test_explorer_source_links_to_upload_or_names_the_user(
    support_client, meter, customer, finance_user
):
    upload = UploadFactory()
    send(meter, customer, [1], batch=upload.batch, identifiers=["from-csv"])
    manual = event_batch_create(source=EventBatch.Source.MANUAL, user=finance_user)
    send(meter, customer, [1], batch=manual, identifiers=["by-hand"])
    html = support_client.get(reverse("events:event_list")).content.decode()
    assert upload.get_absolute_url() in html
    assert f"CSV upload #{upload.pk}" in html
    assert "Manual entry by fay-finance" in html


def test_explorer_filters(support_client, meter, customer):
    other_meter = MeterFactory(event_name="other")
    other_customer = CustomerFactory(external_id="cus_other")
    send(meter, customer, [1], identifiers=["mine"])
    send(other_meter, other_customer, [1], identifiers=["theirs"])
    send(meter, customer, [1], identifiers=["old"], minutes_ago=60 * 24 * 3)
    url = reverse("events:event_list")

    def listed(**params):
        html = support_client.get(url, params).content.decode()
        return {i for i in ("mine", "theirs", "old") if f">{i}<" in html}

    assert listed() == {"mine", "theirs", "old"}
    assert listed(meter=other_meter.meter_id) == {"theirs"}
    assert listed(customer="cus_acme") == {"mine", "old"}
    assert listed(identifier="old") == {"old"}
    start = (timezone.now() - timedelta(days=1)).astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    assert listed(start=start) == {"mine", "theirs"}
    assert listed(source="csv") == set()
    assert listed(customer="cus_nobody") == set()
    assert (
        "No customer has the ID cus_nobody"
        in support_client.get(url, {"customer": "cus_nobody"}).content.decode()
    )


def test_explorer_status_filters_including_conflicts(support_client, finance_user, meter, customer):
    send(meter, customer, [1, 2], identifiers=["keep", "drop"])
    from events.ingestion import meter_event_cancel

    meter_event_cancel(event=MeterEvent.objects.get(identifier="drop"), user=finance_user)
    send(meter, customer, [9], identifiers=["keep"])  # a conflict
    url = reverse("events:event_list")
    cancelled = support_client.get(url, {"status": "cancelled"}).content.decode()
    assert ">drop<" in cancelled and ">keep<" not in cancelled
    assert 'class="event-row cancelled"' in cancelled
    accepted = support_client.get(url, {"status": "accepted"}).content.decode()
    assert ">keep<" in accepted and ">drop<" not in accepted
    conflicts = support_client.get(url, {"status": "conflict"}).content.decode()
    assert "An event already exists with identifier keep" in conflicts
    assert EventRejection.objects.count() == 1


def test_explorer_keyset_pagination(support_client, meter, customer):
    send(meter, customer, list(range(53)), identifiers=[f"e{n:02d}" for n in range(53)])
    url = reverse("events:event_list")
    first = support_client.get(url, {"meter": meter.meter_id})
    page = first.context["page"]
    assert len(page.items) == 50 and page.has_next
    assert page.items[0].identifier == "e52"
    second = support_client.get(url, {"meter": meter.meter_id, "before": page.next_before})
    assert [e.identifier for e in second.context["page"].items] == ["e02", "e01", "e00"]
    assert not second.context["page"].has_next
    assert f"before={page.next_before}" in first.content.decode()


def test_explorer_htmx_returns_only_the_results(support_client, meter, customer):
    send(meter, customer, [1], identifiers=["only"])
    response = support_client.get(reverse("events:event_list"), {"status": "accepted"}, **HTMX)
    html = response.content.decode()
    assert 'id="event-table"' in html and ">only<" in html
    assert "<html" not in html and 'class="filters"' not in html


# --- Cancellation ----------------------------------------------------------------------------
def test_cancel_with_htmx_swaps_the_row(finance_client, meter, customer):
    send(meter, customer, [5], identifiers=["gone"])
    event = MeterEvent.objects.get()
    response = finance_client.post(reverse("events:event_cancel", args=[event.pk]), **HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.strip().startswith(f'<tr id="event-{event.pk}" class="event-row cancelled"')
    assert "by fay-finance" in html
    event.refresh_from_db()
    assert event.cancelled_at is not None
    again = finance_client.post(reverse("events:event_cancel", args=[event.pk]), **HTMX)
    assert "already cancelled" in again.content.decode()


def test_cancel_without_javascript_redirects_back(finance_client, meter, customer):
    send(meter, customer, [5])
    event = MeterEvent.objects.get()
    back = reverse("events:event_list") + "?status=accepted"
    response = finance_client.post(reverse("events:event_cancel", args=[event.pk]), {"next": back})
    assert response.status_code == 302 and response["Location"] == back
    assert MeterEvent.objects.get().cancelled_at is not None
    evil = finance_client.post(
        reverse("events:event_cancel", args=[event.pk]), {"next": "https://evil.example/"}
    )
    assert evil["Location"] == reverse("events:event_list")


def test_support_cannot_cancel(support_client, meter, customer):
    send(meter, customer, [5])
    event = MeterEvent.objects.get()
    assert support_client.post(reverse("events:event_cancel", args=[event.pk])).status_code == 403
    assert MeterEvent.objects.get().cancelled_at is None


# --- Manual entry ----------------------------------------------------------------------------
def entry_post(client, data, **extra):
    return client.post(reverse("events:event_entry"), data, **extra)


def test_detail_pages_load_the_entry_panel_for_finance_only(
    finance_client, support_client, meter, customer
):
    meter_page = finance_client.get(meter.get_absolute_url()).content.decode()
    assert f"{reverse('events:event_entry')}?for_meter={meter.meter_id}" in meter_page
    customer_page = finance_client.get(customer.get_absolute_url()).content.decode()
    assert f"{reverse('events:event_entry')}?for_customer={customer.pk}" in customer_page
    assert "Add usage" not in support_client.get(meter.get_absolute_url()).content.decode()


def test_entry_panel_partial_for_a_meter(finance_client, meter, customer):
    send(meter, customer, [3], identifiers=["earlier"])
    response = finance_client.get(
        reverse("events:event_entry"), {"for_meter": meter.meter_id}, **HTMX
    )
    html = response.content.decode()
    assert html.strip().startswith('<section class="panel" id="usage-entry"')
    assert 'name="meter" value="' + meter.meter_id in html
    assert 'list="customer-options"' in html
    assert "earlier" in html  # recent events below the form


def test_entry_records_the_event_and_shows_it_at_once(
    finance_client, finance_user, meter, customer
):
    response = entry_post(
        finance_client,
        {
            "for_meter": meter.meter_id,
            "meter": meter.meter_id,
            "customer": "cus_acme",
            "value": "12.5",
            "timestamp": "",
            "identifier": "typed-1",
        },
        **HTMX,
    )
    html = response.content.decode()
    event = MeterEvent.objects.select_related("batch").get()
    assert event.identifier == "typed-1"
    assert event.value == Decimal("12.5")
    assert event.batch.source == EventBatch.Source.MANUAL and event.batch.user == finance_user
    assert "Recorded event typed-1" in html
    assert 'class="just-added' in html and "typed-1" in html


def test_entry_converts_offsets_to_utc(finance_client, meter, customer):
    now = timezone.now().astimezone(UTC).replace(microsecond=0)
    typed = now.astimezone(timezone.get_fixed_timezone(330)).strftime("%Y-%m-%dT%H:%M:%S+05:30")
    entry_post(
        finance_client,
        {"meter": meter.meter_id, "customer": "cus_acme", "value": "1", "timestamp": typed},
    )
    assert MeterEvent.objects.get().timestamp == now


def test_entry_shows_core_errors_inline_by_field(finance_client, meter, customer):
    def errors(**data):
        base = {"for_meter": meter.meter_id, "meter": meter.meter_id, "customer": "cus_acme"}
        response = entry_post(finance_client, {**base, "value": "1", **data})
        assert response.status_code == 422
        form = response.context["form"]
        return {name: [str(e) for e in errs] for name, errs in form.errors.items()}

    assert errors(value="abc") == {
        "value": ["The value in the event payload must be a number. Received 'abc'."]
    }
    assert errors(customer="cus_missing") == {
        "customer": ["No customer was found with ID cus_missing."]
    }
    old = (timezone.now() - timedelta(days=40)).strftime("%Y-%m-%d %H:%M")
    assert "more than 35 days in the past" in errors(timestamp=old)["timestamp"][0]
    assert "Enter a date and time" in errors(timestamp="yesterday")["timestamp"][0]
    html = entry_post(
        finance_client,
        {
            "for_meter": meter.meter_id,
            "meter": meter.meter_id,
            "customer": "cus_acme",
            "value": "x",
        },
        **HTMX,
    ).content.decode()
    assert 'id="value-errors"' in html
    assert MeterEvent.objects.count() == 0


def test_entry_duplicate_and_conflict(finance_client, meter, customer):
    data = {
        "meter": meter.meter_id,
        "customer": "cus_acme",
        "value": "2",
        "timestamp": "",
        "identifier": "same",
    }
    entry_post(finance_client, data, **HTMX)
    again = entry_post(finance_client, data, **HTMX).content.decode()
    assert "already recorded; it is not counted twice" in again
    conflict = entry_post(finance_client, {**data, "value": "3"})
    assert "An event already exists with identifier same" in str(
        conflict.context["form"].errors["identifier"]
    )
    assert MeterEvent.objects.count() == 1


def test_entry_from_the_customer_page_chooses_a_meter(finance_client, customer):
    count_meter = MeterFactory(
        display_name="Seats", event_name="seats", aggregation_formula="count"
    )
    html = finance_client.get(
        reverse("events:event_entry"), {"for_customer": customer.pk}, **HTMX
    ).content.decode()
    assert f'<option value="{count_meter.meter_id}">Seats (seats)</option>' in html
    entry_post(
        finance_client,
        {"for_customer": customer.pk, "meter": count_meter.meter_id, "customer": "cus_acme"},
        **HTMX,
    )
    assert MeterEvent.objects.get().meter == count_meter


def test_entry_without_javascript_redirects_with_a_message(finance_client, meter, customer):
    response = entry_post(
        finance_client,
        {
            "for_meter": meter.meter_id,
            "meter": meter.meter_id,
            "customer": "cus_acme",
            "value": "1",
            "next": meter.get_absolute_url(),
        },
        follow=True,
    )
    assert response.redirect_chain[-1][0] == meter.get_absolute_url()
    assert "Recorded event" in response.content.decode()
    invalid = entry_post(
        finance_client, {"meter": meter.meter_id, "customer": "cus_acme", "value": "x"}
    )
    assert invalid.status_code == 422
    assert "<html" in invalid.content.decode()


def test_customer_options_search(finance_client):
    CustomerFactory(external_id="cus_zeta", name="Zeta Corp")
    CustomerFactory(external_id="cus_alpha", name="Alpha", email="ops@alpha.example")
    html = finance_client.get(
        reverse("events:event_customer_options"), {"customer": "cus_z"}, **HTMX
    ).content.decode()
    assert '<option value="cus_zeta">Zeta Corp' in html and "cus_alpha" not in html
    by_email = finance_client.get(
        reverse("events:event_customer_options"), {"customer": "ops@alpha"}
    ).content.decode()
    assert "cus_alpha" in by_email


def test_inactive_meter_page_says_it_accepts_no_events(finance_client, customer):
    meter = MeterFactory(status="inactive", deactivated_at=datetime(2026, 1, 1, tzinfo=UTC))
    html = finance_client.get(
        reverse("events:event_entry"), {"for_meter": meter.meter_id}, **HTMX
    ).content.decode()
    assert "accepts no events" in html and "<form" not in html


def test_explorer_lists_late_unbilled_events(support_client, meter, customer):
    from billing import services as billing_services
    from billing.models import Invoice, InvoiceLine

    subscription = billing_services.subscription_create(
        actor=None,
        customer=customer,
        items=[billing_services.ItemInput(price=build_price_for(meter))],
        interval="month",
    )
    now = timezone.now()
    invoice = Invoice.objects.create(
        customer=customer,
        subscription=subscription,
        currency="usd",
        period_start=now - timedelta(days=2),
        period_end=now - timedelta(days=1),
        finalize_after=now - timedelta(days=1),
        status=Invoice.Status.FINALIZED,
        finalized_at=now - timedelta(hours=12),
        subtotal=0,
        credits_applied=0,
        total=0,
    )
    InvoiceLine.objects.create(
        invoice=invoice,
        position=1,
        price=subscription.items.get().price,
        meter=meter,
        description="API calls",
        quantity=0,
        amount=0,
    )
    send(meter, customer, [1], identifiers=["late-one"], minutes_ago=60 * 36)  # in the period
    send(meter, customer, [1], identifiers=["on-time"], minutes_ago=5)
    html = support_client.get(reverse("events:event_list"), {"status": "late"}).content.decode()
    assert ">late-one<" in html and ">on-time<" not in html


def build_price_for(meter):
    from billing import services as billing_services
    from billing.models import Price

    return billing_services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.METERED,
        pricing_model=Price.Model.PER_UNIT,
        meter=meter,
        unit_amount_decimal=Decimal(5),
    )
