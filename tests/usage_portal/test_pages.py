"""The shared look: the home dashboard, the navigation, flash messages and the 403 page."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import MeterFactory

pytestmark = pytest.mark.django_db


def test_home_links_every_section_and_names_the_role(support_client: Client) -> None:
    html = support_client.get(reverse("home")).content.decode()
    for name in ("meters:meter_list", "customers:customer_list", "events:event_list"):
        assert f'href="{reverse(name)}"' in html
    assert f'href="{reverse("uploads:upload_list")}"' in html
    assert "with the <strong>support</strong> role" in html
    assert "New meter" not in html


def test_home_offers_admin_shortcuts(admin_client_role: Client) -> None:
    html = admin_client_role.get(reverse("home")).content.decode()
    assert f'href="{reverse("meters:meter_create")}"' in html
    assert f'href="{reverse("customers:customer_import")}"' in html


def test_navigation_marks_the_current_section(support_client: Client) -> None:
    html = support_client.get(reverse("customers:customer_list")).content.decode()
    assert f'href="{reverse("customers:customer_list")}" aria-current="page"' in html
    assert f'href="{reverse("meters:meter_list")}" aria-current="page"' not in html


def test_wrong_role_gets_the_403_page_with_the_needed_role(support_client: Client) -> None:
    response = support_client.get(reverse("meters:meter_create"))
    assert response.status_code == 403
    html = response.content.decode()
    assert "Access denied" in html and "needs the admin role" in html
    assert "Your role is <strong>support</strong>" in html
    assert 'class="mainnav"' in html  # the full layout, not a bare error


def test_403_on_a_post_changes_nothing(support_client: Client) -> None:
    meter = MeterFactory.create()
    url = reverse("meters:meter_deactivate", kwargs={"meter_id": meter.meter_id})
    assert support_client.post(url).status_code == 403
    meter.refresh_from_db()
    assert meter.is_active


def test_flash_message_shows_after_a_redirect(admin_client_role: Client) -> None:
    meter = MeterFactory.create(display_name="Calls")
    url = reverse("meters:meter_edit", kwargs={"meter_id": meter.meter_id})
    response = admin_client_role.post(url, {"display_name": "Calls v2"}, follow=True)
    assert '<li class="message success">Meter “Calls v2” saved.</li>' in response.content.decode()
