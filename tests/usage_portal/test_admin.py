"""Django admin: every model of the project's apps is registered and opens for superusers."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.models import User
from django.db.models import Model
from django.test import Client
from django.urls import reverse

from customers.models import Customer
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from usage_portal.models import AuditEntry
from usage_portal.roles import Role

PROJECT_APPS = [
    config
    for config in apps.get_app_configs()
    if Path(config.path).resolve().is_relative_to(Path(settings.BASE_DIR).resolve())
    and ".venv" not in Path(config.path).parts
]
PROJECT_MODELS = [model for config in PROJECT_APPS for model in config.get_models()]
REGISTERED_MODELS = [model for model in PROJECT_MODELS if admin.site.is_registered(model)]


def test_the_project_apps_are_found() -> None:
    labels = {config.label for config in PROJECT_APPS}
    assert {"meters", "usage_portal", "uploads"} <= labels


def _inline_models() -> set[type[Model]]:
    return {
        inline.model
        for model_admin in admin.site._registry.values()
        for inline in model_admin.inlines
    }


@pytest.mark.parametrize("model", PROJECT_MODELS, ids=lambda model: model._meta.label)
def test_every_model_is_registered(model: type[Model]) -> None:
    # A child model shown as an inline of its registered parent counts as registered.
    assert admin.site.is_registered(model) or model in _inline_models(), (
        f"register {model._meta.label} in its admin.py (or show it as an inline)"
    )


@pytest.fixture
def root_client(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("model", REGISTERED_MODELS, ids=lambda model: model._meta.label)
def test_superuser_opens_every_changelist(root_client: Client, model: type[Model]) -> None:
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert root_client.get(url).status_code == 200


@pytest.mark.django_db
def test_admin_role_without_staff_flag_is_kept_out() -> None:
    client = Client()
    client.force_login(UserFactory.create(username="ada", role=Role.ADMIN))
    response = client.get(reverse("admin:meters_meter_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.django_db
def test_admin_edits_go_through_services_and_are_audited(root_client: Client) -> None:
    meter = MeterFactory.create(display_name="Before", event_name="calls")
    url = reverse("admin:meters_meter_change", args=[meter.pk])
    response = root_client.post(url, {"display_name": "After", "event_name": "changed"})
    assert response.status_code == 302
    meter.refresh_from_db()
    assert (meter.display_name, meter.event_name) == ("After", "calls")
    entry = AuditEntry.objects.get(target_type="meters.meter")
    assert entry.changes == {"display_name": ["Before", "After"]}
    assert entry.actor is not None and entry.actor.username == "root"


@pytest.mark.django_db
def test_admin_creates_a_customer_through_the_service(root_client: Client) -> None:
    response = root_client.post(
        reverse("admin:customers_customer_add"),
        {"external_id": "cus_admin", "name": "A", "email": "", "metadata": "{}"},
    )
    assert response.status_code == 302, response.content[:2000]
    customer = Customer.objects.get(external_id="cus_admin")
    assert AuditEntry.objects.get(target_id=str(customer.pk)).action == "create"
    CustomerFactory.create(external_id="cus_dup")
    assert Meter.objects.count() == 0
