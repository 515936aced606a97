from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from meters.models import Meter
from meters.services import meter_deactivate
from tests.factories import MeterFactory
from usage_portal.models import AuditEntry

pytestmark = pytest.mark.django_db

HTMX: dict[str, Any] = {"HTTP_HX_REQUEST": "true"}  # typed as Client.get/post **extra


def _names(response) -> list[str]:
    return [meter.display_name for meter in response.context["page"].items]


def test_list_filters_by_status_and_searches_names(support_client: Client) -> None:
    MeterFactory.create(display_name="Search API", event_name="search_calls")
    MeterFactory.create(display_name="Storage", event_name="gb_stored")
    MeterFactory.create(
        display_name="Old search",
        event_name="legacy",
        status="inactive",
        deactivated_at=timezone.now(),
    )
    url = reverse("meters:meter_list")
    assert _names(support_client.get(url, {"q": "search"})) == ["Old search", "Search API"]
    assert _names(support_client.get(url, {"q": "GB_STO"})) == ["Storage"]
    assert _names(support_client.get(url, {"status": "inactive"})) == ["Old search"]
    assert _names(support_client.get(url, {"status": "active", "q": "search"})) == ["Search API"]


def test_list_sorts_by_columns(support_client: Client) -> None:
    MeterFactory.create(display_name="B", event_name="a_event", aggregation_formula="sum")
    MeterFactory.create(display_name="A", event_name="c_event", aggregation_formula="count")
    MeterFactory.create(display_name="C", event_name="b_event", aggregation_formula="last")
    url = reverse("meters:meter_list")
    assert _names(support_client.get(url)) == ["A", "B", "C"]
    assert _names(support_client.get(url, {"sort": "-name"})) == ["C", "B", "A"]
    assert _names(support_client.get(url, {"sort": "event_name"})) == ["B", "C", "A"]
    assert _names(support_client.get(url, {"sort": "formula"})) == ["A", "C", "B"]
    assert _names(support_client.get(url, {"sort": "nonsense"})) == ["A", "B", "C"]


def test_list_paginates(support_client: Client) -> None:
    for index in range(30):
        MeterFactory.create(display_name=f"Meter {index:02d}")
    url = reverse("meters:meter_list")
    first = support_client.get(url)
    assert len(first.context["page"].items) == 25 and first.context["page"].has_next
    second = support_client.get(url, {"page": 2})
    assert _names(second) == [f"Meter {index:02d}" for index in range(25, 30)]
    assert not second.context["page"].has_next
    assert b"&amp;page=1" in second.content


def test_list_htmx_request_returns_only_the_results_partial(support_client: Client) -> None:
    MeterFactory.create(display_name="Only me")
    response = support_client.get(reverse("meters:meter_list"), {"q": "only"}, **HTMX)
    html = response.content.decode()
    assert "Only me" in html
    assert "<html" not in html and 'class="filters"' not in html
    assert html.lstrip().startswith("<table")


def test_support_sees_no_write_buttons(support_client: Client) -> None:
    meter = MeterFactory.create()
    html = support_client.get(reverse("meters:meter_list")).content.decode()
    assert "New meter" not in html and "Deactivate" not in html
    detail = support_client.get(meter.get_absolute_url()).content.decode()
    assert "Deactivate" not in detail and "Edit" not in detail


def test_create_meter_and_land_on_its_page(admin_client_role: Client) -> None:
    response = admin_client_role.post(
        reverse("meters:meter_create"),
        {
            "display_name": "Tokens",
            "event_name": "llm_tokens",
            "aggregation_formula": "sum",
            "customer_mapping_key": "stripe_customer_id",
            "value_settings_key": "tokens",
            "event_time_window": "",
        },
        follow=True,
    )
    meter = Meter.objects.get(event_name="llm_tokens")
    assert response.redirect_chain[-1][0] == meter.get_absolute_url()
    html = response.content.decode()
    assert "Meter “Tokens” created." in html
    assert meter.meter_id in html and '<section id="meter-usage"' in html


def test_create_form_shows_the_meter_that_has_the_event_name(admin_client_role: Client) -> None:
    existing = MeterFactory.create(display_name="Search API", event_name="search")
    response = admin_client_role.post(
        reverse("meters:meter_create"),
        {
            "display_name": "Dup",
            "event_name": "search",
            "aggregation_formula": "sum",
            "customer_mapping_key": "stripe_customer_id",
            "value_settings_key": "value",
        },
    )
    assert response.status_code == 200
    errors = response.context["form"].errors["event_name"]
    assert "Search API" in errors[0] and existing.meter_id in errors[0]
    assert Meter.objects.count() == 1


def test_edit_changes_the_display_name_and_shows_the_rest_read_only(
    admin_client_role: Client,
) -> None:
    meter = MeterFactory.create(display_name="Before", event_name="calls")
    url = reverse("meters:meter_edit", kwargs={"meter_id": meter.meter_id})
    page = admin_client_role.get(url).content.decode()
    assert 'name="event_name"' not in page and "calls" in page
    response = admin_client_role.post(url, {"display_name": "After", "event_name": "hacked"})
    assert response.status_code == 302
    meter.refresh_from_db()
    assert meter.display_name == "After" and meter.event_name == "calls"


def test_deactivate_with_htmx_from_the_list_returns_only_the_row(
    admin_client_role: Client, admin_role_user: User
) -> None:
    meter = MeterFactory.create(display_name="Calls")
    url = reverse("meters:meter_deactivate", kwargs={"meter_id": meter.meter_id})
    response = admin_client_role.post(url, {"from": "list"}, **HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.strip().startswith(f'<tr id="meter-row-{meter.meter_id}"')
    assert "<html" not in html and "Reactivate" in html and "badge inactive" in html
    meter.refresh_from_db()
    assert meter.status == "inactive"
    assert AuditEntry.objects.get(action="deactivate").actor == admin_role_user


def test_reactivate_with_htmx_on_the_detail_page_returns_the_status_block(
    admin_client_role: Client,
) -> None:
    meter = meter_deactivate(meter=MeterFactory.create(), actor=None)
    url = reverse("meters:meter_reactivate", kwargs={"meter_id": meter.meter_id})
    html = admin_client_role.post(url, **HTMX).content.decode()
    assert "<html" not in html and 'id="meter-status-title"' in html
    assert "Meter reactivated." in html and "Deactivate" in html
    # The history in the swapped block already shows the new entry.
    assert "Reactivated" in html and "Deactivated" in html
    meter.refresh_from_db()
    assert meter.is_active


def test_deactivate_without_javascript_redirects_with_a_message(admin_client_role: Client) -> None:
    meter = MeterFactory.create(display_name="Calls")
    url = reverse("meters:meter_deactivate", kwargs={"meter_id": meter.meter_id})
    response = admin_client_role.post(url, follow=True)
    assert response.redirect_chain[-1][0] == meter.get_absolute_url()
    assert "Meter “Calls” deactivated." in response.content.decode()
    response = admin_client_role.post(url, {"from": "list"}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("meters:meter_list")
    assert "This meter is already inactive." in response.content.decode()


def test_deactivate_needs_post(admin_client_role: Client) -> None:
    meter = MeterFactory.create()
    url = reverse("meters:meter_deactivate", kwargs={"meter_id": meter.meter_id})
    assert admin_client_role.get(url).status_code == 405
    meter.refresh_from_db()
    assert meter.is_active


def test_unknown_meter_is_404(support_client: Client) -> None:
    assert support_client.get("/meters/mtr_nope/").status_code == 404
