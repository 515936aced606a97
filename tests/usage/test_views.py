"""Usage pages over HTTP: the customer usage section (full page and htmx swap with a pushed,
shareable URL), the explain chain from a period total down to the event explorer, the meter
overview and live feed, and the alert pages."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.urls import reverse

from alerts.models import UsageAlert
from alerts.services import usage_alert_create, usage_alerts_evaluate
from events.ingestion import EventInput, event_batch_create, meter_event_cancel, meter_events_ingest
from events.models import EventBatch, MeterEvent
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory

# The clock is frozen mid-month (a Monday, midday) for every test and its fixtures: the
# usage placed a few days ago is this month's and this week's, whatever today is, and the
# "this month" figures and the alert's month count it.
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
TODAY = NOW.replace(hour=0)
DAY = timedelta(days=1)

pytestmark = [pytest.mark.django_db, pytest.mark.time_machine(NOW, tick=False)]


def send(meter, customer, items):
    batch = event_batch_create(source=EventBatch.Source.API)
    report = meter_events_ingest(
        events=[
            EventInput(
                event_name=meter.event_name,
                payload={"stripe_customer_id": customer.external_id, "value": str(value)},
                timestamp=at,
            )
            for at, value in items
        ],
        batch=batch,
    )
    assert report.rejected == 0


@pytest.fixture
def usage(support_user):
    meter = MeterFactory(display_name="API calls", aggregation_formula=Meter.Formula.SUM)
    customer = CustomerFactory(external_id="cus_explain")
    items = [
        (TODAY - 3 * DAY + timedelta(hours=2, minutes=5), "1.25"),
        (TODAY - 3 * DAY + timedelta(hours=2, minutes=40), "2"),
        (TODAY - 3 * DAY + timedelta(hours=9), "10"),
        (TODAY - 2 * DAY + timedelta(hours=1), "0.5"),
        (TODAY - 2 * DAY + timedelta(hours=1, minutes=1), "100"),  # cancelled below
    ]
    send(meter, customer, items)
    meter_event_cancel(event=MeterEvent.objects.get(value=Decimal(100)), user=support_user)
    return meter, customer


def custom_query(start, days):
    last = (start + (days - 1) * DAY).date().isoformat()
    return {"range": "custom", "start": start.date().isoformat(), "end": last}


def number(text: str) -> Decimal:
    return Decimal(text.replace(",", ""))


def test_customer_usage_page_shows_each_meter_in_utc(support_client: Client, usage):
    meter, customer = usage
    url = reverse("usage:customer_usage", kwargs={"pk": customer.pk})
    response = support_client.get(url, custom_query(TODAY - 6 * DAY, 7))
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" in body  # a full page without htmx
    assert "All times are UTC" in body
    assert "Grouped by hour" in body  # 7 days: hourly
    (section,) = response.context["sections"]
    assert section["usage"].meter == meter
    assert section["usage"].total == Decimal("13.75")  # the cancelled 100 does not count
    assert section["usage"].event_count == 4
    assert section["usage"].last_event_at == TODAY - 2 * DAY + timedelta(hours=1)
    assert len(section["rows"]) == 7 * 24
    assert 'class="quantity"' in body and "13.75" in body
    assert "<svg" in body and '<table class="buckets"' in body
    response = support_client.get(url, custom_query(TODAY - 29 * DAY, 30))
    assert "Grouped by day" in response.content.decode()
    assert len(response.context["sections"][0]["rows"]) == 30


def test_htmx_swaps_only_the_section_and_pushes_a_shareable_url(support_client: Client, usage):
    meter, customer = usage
    url = reverse("usage:customer_usage", kwargs={"pk": customer.pk})
    response = support_client.get(url, {"range": "7d"}, headers={"HX-Request": "true"})
    body = response.content.decode()
    assert "<html" not in body and 'id="usage-title"' in body
    pushed = response["HX-Push-Url"]
    assert pushed == f"{customer.get_absolute_url()}?range=7d"
    # The pushed URL reopens the same choice: the customer page passes it to the section.
    page = support_client.get(pushed).content.decode()
    assert f'hx-get="{url}?range=7d"' in page
    # The section's own first load does not push anything.
    first = support_client.get(
        url, headers={"HX-Request": "true", "HX-Trigger": "customer-usage-body"}
    )
    assert "HX-Push-Url" not in first
    # Choosing a meter keeps it in the URL.
    response = support_client.get(
        url,
        {**custom_query(TODAY - 2 * DAY, 2), "meter": meter.meter_id},
        headers={"HX-Request": "true"},
    )
    query = parse_qs(urlsplit(response["HX-Push-Url"]).query)
    assert query["meter"] == [meter.meter_id] and query["range"] == ["custom"]


def test_a_bad_custom_range_says_so_and_falls_back(support_client: Client, usage):
    _, customer = usage
    url = reverse("usage:customer_usage", kwargs={"pk": customer.pk})
    response = support_client.get(
        url, {"range": "custom", "start": "2026-03-10", "end": "2026-03-01"}
    )
    assert "The range ends before it starts." in response.content.decode()
    assert response.context["range"].preset == "this_month"


def _links(body: str) -> list[str]:
    return [link.replace("&amp;", "&") for link in re.findall(r'href="([^"]+)"', body)]


def test_explain_chain_from_the_total_down_to_the_events_adds_up(support_client: Client, usage):
    meter, customer = usage
    page = support_client.get(
        reverse("usage:customer_usage", kwargs={"pk": customer.pk}),
        custom_query(TODAY - 29 * DAY, 30),
    )
    total_url = page.context["sections"][0]["explain_url"]
    # Level 1: the 30-day total and its days.
    level1 = support_client.get(total_url)
    assert level1.context["adds_up"]
    assert level1.context["usage"].total == Decimal("13.75")
    days = [row for row in level1.context["rows"] if row.event_count]
    assert [(row.value, row.event_count) for row in days] == [
        (Decimal("13.25"), 3),
        (Decimal("0.5"), 1),
    ]
    assert "✓ Adds up" in level1.content.decode()
    assert days[0].url in _links(level1.content.decode())
    # Level 2: a day and its hours.
    level2 = support_client.get(days[0].url)
    assert level2.context["adds_up"]
    assert level2.context["usage"].total == days[0].value
    hours = [row for row in level2.context["rows"] if row.event_count]
    assert [(row.value, row.event_count) for row in hours] == [
        (Decimal("3.25"), 2),
        (Decimal("10"), 1),
    ]
    assert sum(row.value for row in hours) == days[0].value
    # Level 3: an hour's events in the event explorer, filters preset, source shown.
    explorer = support_client.get(hours[0].url)
    assert explorer.status_code == 200
    rows = explorer.context["rows"]
    assert sorted(row["event"].value for row in rows) == [Decimal("1.25"), Decimal("2")]
    assert sum(row["event"].value for row in rows) == hours[0].value
    assert all(row["source_label"].startswith("API") for row in rows)
    form = explorer.context["form"]
    assert form.cleaned_data["meter"] == meter
    assert form.cleaned_data["customer"] == customer


def test_explain_for_the_cancelled_hour_excludes_the_cancelled_event(support_client: Client, usage):
    meter, customer = usage
    day = TODAY - 2 * DAY
    response = support_client.get(
        reverse("usage:usage_explain", kwargs={"pk": customer.pk, "meter_id": meter.meter_id}),
        {"start": day.isoformat(), "end": (day + DAY).isoformat()},
    )
    (hour,) = [row for row in response.context["rows"] if row.event_count]
    assert (hour.value, hour.event_count) == (Decimal("0.5"), 1)
    explorer = support_client.get(hour.url)
    assert [row["event"].value for row in explorer.context["rows"]] == [Decimal("0.5")]


def test_meter_overview_and_live_feed(support_client: Client, usage):
    meter, customer = usage
    url = reverse("usage:meter_overview", kwargs={"meter_id": meter.meter_id})
    response = support_client.get(url, custom_query(TODAY - 6 * DAY, 7))
    assert response.status_code == 200
    assert response.context["total"] == Decimal("13.75")
    (top,) = response.context["top"]
    assert (top.customer, top.value, top.event_count) == (customer, Decimal("13.75"), 4)
    body = response.content.decode()
    assert 'id="meter-live"' in body and 'hx-trigger="every 5s"' in body
    swapped = support_client.get(url, {"range": "30d"}, headers={"HX-Request": "true"})
    assert swapped["HX-Push-Url"] == f"{meter.get_absolute_url()}?range=30d"
    live = support_client.get(
        reverse("usage:meter_live_feed", kwargs={"meter_id": meter.meter_id}),
        headers={"HX-Request": "true"},
    )
    live_body = live.content.decode()
    assert "<html" not in live_body and 'id="meter-live"' in live_body
    # All five received events, the cancelled one too (struck out).
    assert live_body.count(f'href="{customer.get_absolute_url()}"') == 5
    assert live_body.count('<tr class="cancelled">') == 1
    # The meter page loads the overview.
    detail = support_client.get(meter.get_absolute_url()).content.decode()
    assert f'hx-get="{url}"' in detail


def test_admin_creates_an_alert_and_support_sees_it_fire(
    admin_client_role: Client, support_client: Client, usage
):
    meter, customer = usage
    response = admin_client_role.post(
        reverse("alerts:alert_create"),
        {"title": "Big", "meter": meter.meter_id, "customer": "cus_nobody", "threshold": "5"},
    )
    assert "No customer has the ID cus_nobody." in response.content.decode()
    response = admin_client_role.post(
        reverse("alerts:alert_create"),
        {
            "title": "Big",
            "meter": meter.meter_id,
            "customer": customer.external_id,
            "threshold": "5",
            "webhook_url": "",
        },
    )
    alert = UsageAlert.objects.get()
    assert response.status_code == 302 and response["Location"] == alert.get_absolute_url()
    assert (alert.customer, alert.threshold) == (customer, Decimal(5))
    usage_alerts_evaluate(pairs=[(meter.pk, customer.pk)])
    listing = support_client.get(reverse("alerts:alert_list")).content.decode()
    assert "Big" in listing and "13.75" in listing
    detail = support_client.get(alert.get_absolute_url()).content.decode()
    assert "cus_explain" in detail and "No webhook" in detail
    page = support_client.get(
        reverse("usage:customer_usage", kwargs={"pk": customer.pk})
    ).content.decode()
    alerts_url = reverse("alerts:customer_alerts", kwargs={"pk": customer.pk})
    assert f'hx-get="{alerts_url}"' in page  # the alerts app's section, loaded after the page
    section = support_client.get(alerts_url, headers={"HX-Request": "true"}).content.decode()
    assert 'id="customer-alerts"' in section and "Big" in section and "<html" not in section
    full = support_client.get(alerts_url).content.decode()
    assert "<html" in full and "Big" in full  # without JavaScript: a page of its own
    response = admin_client_role.post(
        reverse("alerts:alert_status", kwargs={"pk": alert.pk}), {"status": "inactive"}
    )
    alert.refresh_from_db()
    assert alert.status == "inactive"


def test_home_dashboard_links_each_figure(support_client: Client, usage):
    meter, customer = usage
    usage_alert_create(actor=None, title="Low", meter=meter, threshold=Decimal(1))
    usage_alerts_evaluate(pairs=[(meter.pk, customer.pk)])
    response = support_client.get(reverse("home"))
    figures = response.context["figures"]
    assert figures.events_today == 5  # received today, the cancelled one included
    assert figures.customers_with_usage_this_month == 1  # its usage of 2 and 3 days ago
    assert response.context["alerts_fired_this_week"] == 1
    body = response.content.decode()
    for name in (
        "events:event_list",
        "uploads:upload_list",
        "meters:meter_list",
        "customers:customer_list",
        "alerts:alert_list",
    ):
        assert f'href="{reverse(name)}' in body
