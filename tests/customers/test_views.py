from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from customers.models import Customer
from tests.factories import CustomerFactory
from usage_portal.models import AuditEntry

pytestmark = pytest.mark.django_db

HTMX: dict[str, Any] = {"HTTP_HX_REQUEST": "true"}  # typed as Client.get/post **extra


def _ids(response) -> list[str]:
    return [customer.external_id for customer in response.context["page"].items]


def test_search_matches_id_name_and_email_case_insensitively(support_client: Client) -> None:
    CustomerFactory.create(external_id="cus_ACME", name="Acme Corp", email="ap@acme.test")
    CustomerFactory.create(external_id="cus_globex", name="Globex", email="billing@globex.test")
    CustomerFactory.create(
        external_id="cus_initech", name="Initech", email="money@acme-partner.test"
    )
    url = reverse("customers:customer_list")
    assert _ids(support_client.get(url, {"q": "acme"})) == ["cus_ACME", "cus_initech"]
    assert _ids(support_client.get(url, {"q": "GLOBEX"})) == ["cus_globex"]
    assert _ids(support_client.get(url, {"q": "cus_ini"})) == ["cus_initech"]
    assert _ids(support_client.get(url, {"q": "nothing"})) == []
    assert len(_ids(support_client.get(url))) == 3


def test_list_pages_without_counting(support_client: Client) -> None:
    for index in range(55):
        CustomerFactory.create(external_id=f"cus_{index:03d}")
    url = reverse("customers:customer_list")
    first = support_client.get(url)
    assert len(_ids(first)) == 50 and first.context["page"].has_next
    second = support_client.get(url, {"page": "2"})
    assert _ids(second) == [f"cus_{index:03d}" for index in range(50, 55)]
    assert "Customers 51\u201355" in second.content.decode()
    assert _ids(support_client.get(url, {"page": "junk"}))[0] == "cus_000"


def test_htmx_search_returns_only_the_results_partial(support_client: Client) -> None:
    CustomerFactory.create(external_id="cus_x", name="Xylophone")
    response = support_client.get(reverse("customers:customer_list"), {"q": "xylo"}, **HTMX)
    html = response.content.decode()
    assert "Xylophone" in html and "<html" not in html and 'role="search"' not in html


def test_create_customer_with_metadata(admin_client_role: Client) -> None:
    response = admin_client_role.post(
        reverse("customers:customer_create"),
        {"external_id": "cus_new", "name": "New", "email": "", "metadata": '{"plan": "pro"}'},
        follow=True,
    )
    customer = Customer.objects.get(external_id="cus_new")
    assert customer.metadata == {"plan": "pro"}
    html = response.content.decode()
    assert response.redirect_chain[-1][0] == customer.get_absolute_url()
    assert '<section id="customer-usage"' in html
    assert "plan" in html and "pro" in html


def test_create_duplicate_id_shows_error_on_the_field(admin_client_role: Client) -> None:
    CustomerFactory.create(external_id="cus_dup")
    response = admin_client_role.post(
        reverse("customers:customer_create"), {"external_id": "cus_dup", "metadata": ""}
    )
    assert response.status_code == 200
    assert "already exists" in response.context["form"].errors["external_id"][0]


def test_edit_cannot_change_the_id(admin_client_role: Client) -> None:
    customer = CustomerFactory.create(external_id="cus_fixed", name="Old", email="a@b.test")
    url = reverse("customers:customer_edit", kwargs={"pk": customer.pk})
    page = admin_client_role.get(url).content.decode()
    assert 'name="external_id"' not in page and "cus_fixed" in page
    response = admin_client_role.post(
        url, {"external_id": "cus_other", "name": "New", "email": "a@b.test", "metadata": ""}
    )
    assert response.status_code == 302
    customer.refresh_from_db()
    assert customer.external_id == "cus_fixed" and customer.name == "New"
    assert AuditEntry.objects.get(action="update").changes == {"name": ["Old", "New"]}


def test_edit_shows_bad_metadata_json_and_keeps_the_old_value(admin_client_role: Client) -> None:
    customer = CustomerFactory.create(metadata={"a": "b"})
    url = reverse("customers:customer_edit", kwargs={"pk": customer.pk})
    response = admin_client_role.post(url, {"name": "x", "metadata": "{bad"})
    assert response.status_code == 200
    assert "not valid JSON" in response.content.decode()
    customer.refresh_from_db()
    assert customer.metadata == {"a": "b"}


def test_edit_prefills_metadata_as_json(admin_client_role: Client) -> None:
    customer = CustomerFactory.create(metadata={"plan": "pro"})
    html = admin_client_role.get(
        reverse("customers:customer_edit", kwargs={"pk": customer.pk})
    ).content.decode()
    assert "&quot;plan&quot;: &quot;pro&quot;" in html


def test_support_sees_no_write_links(support_client: Client) -> None:
    customer = CustomerFactory.create()
    html = support_client.get(reverse("customers:customer_list")).content.decode()
    assert "Import CSV" not in html and "New customer" not in html
    assert "Edit" not in support_client.get(customer.get_absolute_url()).content.decode()
