"""An admin creates a meter in the browser, deactivates and reactivates it in place (htmx,
accepting the confirmation dialog), and sees the meter list change."""

from __future__ import annotations

import re

import pytest

from meters.models import Meter
from tests.conftest import browser_login
from tests.factories import MeterFactory, UserFactory
from usage_portal.models import AuditEntry
from usage_portal.roles import Role

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_admin_creates_deactivates_and_reactivates_a_meter(page) -> None:
    UserFactory.create(username="ada-admin", role=Role.ADMIN)
    MeterFactory.create(display_name="Existing storage", event_name="storage")
    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)

    browser_login(page, "ada-admin")
    page.click("nav.mainnav >> text=Meters")
    page.click("text=New meter")
    page.fill("#id_display_name", "Search API calls")
    page.fill("#id_event_name", "search_api")
    page.select_option("#id_aggregation_formula", "count")
    page.click("button:has-text('Create meter')")
    page.locator("h1:has-text('Search API calls')").wait_for()
    meter = Meter.objects.get(event_name="search_api")
    assert meter.aggregation_formula == "count"

    # Deactivate in place on the detail page: no navigation, the status block is swapped.
    url_before = page.url
    page.click("#meter-status button:has-text('Deactivate')")
    page.locator("#meter-status-badge:has-text('Inactive')").wait_for()
    assert page.url == url_before
    assert dialogs and "Deactivate meter “Search API calls”" in dialogs[-1]
    assert page.locator("#meter-history").inner_text().count("Deactivated") == 1

    # The list shows it as inactive, and the status filter finds it.
    page.click("nav.mainnav >> text=Meters")
    row = page.locator(f"#meter-row-{meter.meter_id}")
    assert row.locator(".badge").inner_text() == "Inactive"
    page.select_option("#id_status", "inactive")
    page.wait_for_url(re.compile(r"status=inactive"))
    page.locator("#meter-results tbody tr").first.wait_for()
    assert page.locator("#meter-results tbody tr").count() == 1
    assert "Existing storage" not in page.locator("#meter-results").inner_text()

    # Reactivate from the list row: the row is swapped in place; the filter is still on.
    row.locator("button:has-text('Reactivate')").click()
    row.locator(".badge", has_text=re.compile(r"^Active$")).wait_for()
    assert row.locator("button:has-text('Deactivate')").is_visible()
    assert "Reactivate meter “Search API calls”" in dialogs[-1]

    page.select_option("#id_status", "active")
    page.wait_for_url(re.compile(r"status=active"))
    page.locator("#meter-results:has-text('Existing storage')").wait_for()
    assert page.locator(f"#meter-row-{meter.meter_id} .badge").inner_text() == "Active"

    meter.refresh_from_db()
    assert meter.is_active
    actions = list(
        AuditEntry.objects.filter(target_id=str(meter.pk), target_type="meters.meter")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["create", "deactivate", "reactivate"]


def test_dismissing_the_confirmation_changes_nothing(page) -> None:
    UserFactory.create(username="ada-admin", role=Role.ADMIN)
    meter = MeterFactory.create(display_name="Keep me")
    page.on("dialog", lambda dialog: dialog.dismiss())
    browser_login(page, "ada-admin")
    page.goto(meter.get_absolute_url())
    page.click("#meter-status button:has-text('Deactivate')")
    page.wait_for_load_state("networkidle")
    assert page.locator("#meter-status-badge").inner_text() == "Active"
    meter.refresh_from_db()
    assert meter.is_active
