"""v1 event summaries and adjustments through the official SDK over real HTTP: the values the
pages show, Stripe's alignment rules and paging, cancels within 24 hours."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests
import stripe
import time_machine

from events.ingestion import EventInput, event_batch_create, meter_events_ingest
from events.models import EventBatch, MeterEvent
from tests.factories import CustomerFactory, MeterFactory
from usage.summaries import Grouping, meter_event_summaries
from usage_portal.roles import Role

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _mid_day() -> Iterator[None]:
    """Days and hours are cut at UTC boundaries: run at a fixed noon (the clock ticking, for
    the live server and the SDK), so no run straddles midnight or the hour."""
    with time_machine.travel(datetime(2026, 6, 15, 12, 30, tzinfo=UTC), tick=True):
        yield


DAY = timedelta(days=1)


def _today() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _record(meter, customer, rows: list[tuple[datetime, str, str]]) -> None:
    batch = event_batch_create(source=EventBatch.Source.API)
    meter_events_ingest(
        events=[
            EventInput(meter.event_name, {"stripe_customer_id": customer.external_id, "value": v},
                       identifier, at)
            for at, v, identifier in rows
        ],
        batch=batch,
    )  # fmt: skip


def test_summaries_by_day_and_hour_page_through_exactly_what_the_pages_show(
    client_for, secret_for, api_base
) -> None:
    meter = MeterFactory.create(event_name="tokens")
    customer = CustomerFactory.create(external_id="cus_s")
    start = _today() - 5 * DAY
    rows = [(start + n * DAY + timedelta(hours=n), f"{n}.25", f"s-{n}") for n in range(5)]
    rows.append((start + timedelta(minutes=7), "0.000001", "s-extra"))
    _record(meter, customer, rows)
    secret = secret_for(Role.SUPPORT)
    summaries = client_for(secret=secret).v1.billing.meters.event_summaries

    daily = summaries.list(
        meter.meter_id,
        {"customer": "cus_s", "start_time": int(start.timestamp()),
         "end_time": int((start + 5 * DAY).timestamp()), "value_grouping_window": "day",
         "limit": 2},
    )  # fmt: skip
    assert (
        daily.has_more is True
        and daily.url == f"/v1/billing/meters/{meter.meter_id}/event_summaries"
    )
    every = list(daily.auto_paging_iter())
    assert [s.start_time for s in every] == [int((start + n * DAY).timestamp()) for n in range(5)]
    assert all(s.end_time - s.start_time == 86400 for s in every)
    expected = meter_event_summaries(
        meter=meter, customer=customer, start=start, end=start + 5 * DAY, grouping=Grouping.DAY
    )
    assert [Decimal(str(s.aggregated_value)) for s in every] == [
        e.aggregated_value for e in expected
    ]
    assert every[0].meter == meter.meter_id and every[0].id.startswith("mtrusg_")

    # The reply's JSON carries the exact decimals (the SDK reads them as floats).
    raw = requests.get(
        f"{api_base}/v1/billing/meters/{meter.meter_id}/event_summaries",
        params={"customer": "cus_s", "start_time": str(int(start.timestamp())),
                "end_time": str(int((start + DAY).timestamp()))},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )  # fmt: skip
    assert '"aggregated_value": 0.250001' in raw.text

    hourly = summaries.list(
        meter.meter_id,
        {"customer": "cus_s", "start_time": int(start.timestamp()),
         "end_time": int((start + DAY).timestamp()), "value_grouping_window": "hour", "limit": 100},
    )  # fmt: skip
    assert len(hourly.data) == 24 and hourly.has_more is False
    assert Decimal(str(hourly.data[0].aggregated_value)) == Decimal("0.250001")
    whole = summaries.list(
        meter.meter_id,
        {"customer": "cus_s", "start_time": int(start.timestamp()),
         "end_time": int((start + 5 * DAY).timestamp())},
    )  # fmt: skip
    assert len(whole.data) == 1
    assert Decimal(str(whole.data[0].aggregated_value)) == sum(
        (Decimal(v) for _, v, _ in rows), Decimal(0)
    )


@pytest.mark.parametrize(
    ("shift", "window", "param"),
    [(timedelta(seconds=30), "", "start_time"), (timedelta(minutes=30), "hour", "start_time"),
     (timedelta(hours=3), "day", "start_time")],
)  # fmt: skip
def test_misaligned_times_are_refused_with_the_rule(client_for, shift, window, param) -> None:
    meter = MeterFactory.create()
    CustomerFactory.create(external_id="cus_m")
    start = _today() - 2 * DAY + shift
    params = {"customer": "cus_m", "start_time": int(start.timestamp()),
              "end_time": int((_today()).timestamp())}  # fmt: skip
    if window:
        params["value_grouping_window"] = window
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client_for(Role.SUPPORT).v1.billing.meters.event_summaries.list(meter.meter_id, params)
    assert (raised.value.param, raised.value.code) == (param, "misaligned_range")
    assert "got" in str(raised.value.user_message)  # says what it received


def test_an_unknown_customer_is_named(client_for) -> None:
    meter = MeterFactory.create()
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client_for(Role.SUPPORT).v1.billing.meters.event_summaries.list(
            meter.meter_id,
            {"customer": "cus_who", "start_time": int(_today().timestamp()) - 86400,
             "end_time": int(_today().timestamp())},
        )  # fmt: skip
    assert (raised.value.param, raised.value.code) == ("customer", "resource_missing")


def test_a_cancel_takes_the_event_out_of_the_summaries(client_for) -> None:
    meter = MeterFactory.create(event_name="tokens")
    customer = CustomerFactory.create(external_id="cus_c")
    at = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    _record(meter, customer, [(at, "5", "keep"), (at, "7", "drop")])
    client = client_for(Role.FINANCE)

    adjustment = client.v1.billing.meter_event_adjustments.create(
        {"event_name": "tokens", "type": "cancel", "cancel": {"identifier": "drop"}}
    )
    assert isinstance(adjustment, stripe.billing.MeterEventAdjustment)
    assert adjustment.cancel is not None
    assert (adjustment.status, adjustment.cancel.identifier) == ("complete", "drop")
    (summary,) = client.v1.billing.meters.event_summaries.list(
        meter.meter_id,
        {"customer": "cus_c", "start_time": int((at - timedelta(hours=1)).timestamp()),
         "end_time": int((at + timedelta(hours=1)).timestamp())},
    ).data  # fmt: skip
    assert Decimal(str(summary.aggregated_value)) == 5
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": "tokens", "type": "cancel", "cancel": {"identifier": "drop"}}
        )
    assert again.value.code == "already_cancelled"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": "tokens", "type": "cancel", "cancel": {"identifier": "nope"}}
        )
    assert (unknown.value.code, unknown.value.param) == ("resource_missing", "cancel[identifier]")
    MeterEvent.objects.filter(identifier="keep").update(received_at=datetime.now(UTC) - 2 * DAY)
    with pytest.raises(stripe.InvalidRequestError) as late:
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": "tokens", "type": "cancel", "cancel": {"identifier": "keep"}}
        )
    assert late.value.code == "cancel_window_passed"
    with pytest.raises(stripe.PermissionError):
        client_for(Role.SUPPORT).v1.billing.meter_event_adjustments.create(
            {"event_name": "tokens", "type": "cancel", "cancel": {"identifier": "keep"}}
        )
