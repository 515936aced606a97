from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client

from customers.services import customer_create, customer_update
from meters.services import meter_create, meter_deactivate
from tests.factories import CustomerFactory, MeterFactory
from usage_portal.audit import audit_entries_for, audit_record
from usage_portal.models import AuditEntry

pytestmark = pytest.mark.django_db


def test_audit_record_stores_json_safe_changes(admin_role_user: User) -> None:
    meter = MeterFactory.create()
    entry = audit_record(
        target=meter,
        action=AuditEntry.Action.UPDATE,
        actor=admin_role_user,
        changes={"value": (Decimal("1.50"), Decimal("2")), "created": (None, meter.created)},
    )
    entry.refresh_from_db()
    assert entry.target_type == "meters.meter" and entry.target_id == str(meter.pk)
    assert entry.changes == {"value": ["1.50", "2"], "created": [None, meter.created.isoformat()]}


def test_entries_are_per_object_newest_first(admin_role_user: User) -> None:
    meter = meter_create(actor=admin_role_user, display_name="A", event_name="a")
    other = meter_create(actor=admin_role_user, display_name="B", event_name="b")
    meter_deactivate(meter=meter, actor=admin_role_user)
    customer = customer_create(actor=admin_role_user, external_id=str(meter.pk))
    actions = [entry.action for entry in audit_entries_for(target=meter)]
    assert actions == ["deactivate", "create"]
    assert [entry.action for entry in audit_entries_for(target=other)] == ["create"]
    # Same primary key, different model: not mixed up.
    assert [e.action for e in audit_entries_for(target=customer)] == ["create"]


def test_meter_page_shows_who_did_what(admin_client_role: Client, admin_role_user: User) -> None:
    meter = meter_create(actor=admin_role_user, display_name="Calls", event_name="calls")
    meter_deactivate(meter=meter, actor=admin_role_user)
    html = admin_client_role.get(meter.get_absolute_url()).content.decode()
    history = html[html.index('id="meter-history"') :]
    assert "Deactivated" in history and "Created" in history
    assert history.index("Deactivated") < history.index("Created")
    assert "ada-admin" in history or admin_role_user.get_full_name() in history


def test_customer_page_shows_changes(admin_client_role: Client, admin_role_user: User) -> None:
    customer = CustomerFactory.create(name="Old name")
    customer_update(customer=customer, actor=admin_role_user, name="New name")
    html = admin_client_role.get(customer.get_absolute_url()).content.decode()
    history = html[html.index('id="customer-history"') :]
    assert "<del>Old name</del> → New name" in history
