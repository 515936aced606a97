from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from meters.models import Meter
from meters.services import meter_create, meter_deactivate, meter_reactivate, meter_update
from tests.factories import MeterFactory
from usage_portal.models import AuditEntry

pytestmark = pytest.mark.django_db


def _codes(error: ValidationError, field: str) -> list[str]:
    return [e.code for e in error.error_dict[field]]  # type: ignore[misc]


def test_create_sets_stripe_defaults_and_a_url_safe_mtr_id(admin_role_user: User) -> None:
    meter = meter_create(actor=admin_role_user, display_name=" API calls ", event_name="api_calls")
    assert meter.meter_id.startswith("mtr_")
    assert meter.meter_id[4:].isalnum() and len(meter.meter_id) > 20
    assert meter.display_name == "API calls"
    assert meter.aggregation_formula == Meter.Formula.SUM
    assert meter.customer_mapping_key == "stripe_customer_id"
    assert meter.value_settings_key == "value"
    assert meter.event_time_window == ""
    assert meter.status == Meter.Status.ACTIVE and meter.deactivated_at is None


def test_create_records_an_audit_entry_with_actor_and_fields(admin_role_user: User) -> None:
    meter = meter_create(
        actor=admin_role_user,
        display_name="Tokens",
        event_name="llm.tokens",
        aggregation_formula="last",
        value_settings_key="tokens",
        event_time_window="hour",
    )
    entry = AuditEntry.objects.get(target_type="meters.meter", target_id=str(meter.pk))
    assert entry.action == AuditEntry.Action.CREATE
    assert entry.actor == admin_role_user
    assert entry.changes["event_name"] == [None, "llm.tokens"]
    assert entry.changes["value_settings_key"] == [None, "tokens"]
    assert entry.changes["aggregation_formula"] == [None, "last"]


@pytest.mark.parametrize(
    "event_name",
    ["has space", "slash/no", "ümlaut", "", "x" * 101, "semi;colon"],
)
def test_create_rejects_invalid_event_names(admin_role_user: User, event_name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        meter_create(actor=admin_role_user, display_name="Bad", event_name=event_name)
    assert "event_name" in caught.value.error_dict
    assert not Meter.objects.exists()


def test_event_name_allows_letters_digits_underscore_hyphen_dot(admin_role_user: User) -> None:
    meter = meter_create(actor=admin_role_user, display_name="Ok", event_name="A-z_0.9" + "x" * 93)
    assert len(meter.event_name) == 100


def test_duplicate_event_name_names_the_meter_that_has_it(admin_role_user: User) -> None:
    existing = MeterFactory.create(display_name="Search calls", event_name="search")
    meter_deactivate(meter=existing, actor=admin_role_user)  # inactive meters count too
    with pytest.raises(ValidationError) as caught:
        meter_create(actor=admin_role_user, display_name="Other", event_name="search")
    assert _codes(caught.value, "event_name") == ["duplicate_event_name"]
    message = caught.value.messages[0]
    assert "Search calls" in message and existing.meter_id in message and "inactive" in message
    assert Meter.objects.count() == 1


def test_display_name_and_keys_are_limited(admin_role_user: User) -> None:
    with pytest.raises(ValidationError) as caught:
        meter_create(
            actor=admin_role_user,
            display_name="d" * 251,
            event_name="ok",
            customer_mapping_key="k" * 101,
            value_settings_key="",
        )
    assert {"display_name", "customer_mapping_key", "value_settings_key"} <= set(
        caught.value.error_dict
    )


def test_unknown_formula_and_window_are_refused(admin_role_user: User) -> None:
    with pytest.raises(ValidationError) as caught:
        meter_create(
            actor=admin_role_user,
            display_name="x",
            event_name="x",
            aggregation_formula="max",
            event_time_window="week",
        )
    assert {"aggregation_formula", "event_time_window"} <= set(caught.value.error_dict)


def test_update_changes_only_the_display_name_and_audits_it(admin_role_user: User) -> None:
    meter = MeterFactory.create(display_name="Old")
    updated = meter_update(meter=meter, actor=admin_role_user, display_name="New")
    assert updated.display_name == "New"
    entry = AuditEntry.objects.get(action=AuditEntry.Action.UPDATE)
    assert entry.changes == {"display_name": ["Old", "New"]}
    assert entry.actor == admin_role_user


def test_update_without_a_change_records_nothing(admin_role_user: User) -> None:
    meter = MeterFactory.create(display_name="Same")
    meter_update(meter=meter, actor=admin_role_user, display_name="Same")
    assert not AuditEntry.objects.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_name", "renamed"),
        ("aggregation_formula", "count"),
        ("customer_mapping_key", "customer"),
        ("value_settings_key", "amount"),
        ("event_time_window", "day"),
    ],
)
def test_update_refuses_changes_to_anything_but_the_display_name(
    admin_role_user: User, field: str, value: str
) -> None:
    meter = MeterFactory.create(display_name="Keep")
    with pytest.raises(ValidationError) as caught:
        meter_update(meter=meter, actor=admin_role_user, display_name="Changed", **{field: value})
    assert _codes(caught.value, field) == ["immutable_field"]
    meter.refresh_from_db()
    assert meter.display_name == "Keep"
    assert getattr(meter, field) != value
    assert not AuditEntry.objects.exists()


def test_update_accepts_unchanged_immutable_fields(admin_role_user: User) -> None:
    meter = MeterFactory.create(event_name="same")
    meter_update(meter=meter, actor=admin_role_user, display_name="X", event_name="same")
    meter.refresh_from_db()
    assert meter.display_name == "X"


def test_deactivate_and_reactivate_keep_status_history(admin_role_user: User) -> None:
    meter = MeterFactory.create()
    meter = meter_deactivate(meter=meter, actor=admin_role_user)
    assert meter.status == Meter.Status.INACTIVE and meter.deactivated_at is not None
    deactivated_at = meter.deactivated_at
    meter = meter_reactivate(meter=meter, actor=admin_role_user)
    assert meter.status == Meter.Status.ACTIVE and meter.deactivated_at is None
    history = list(AuditEntry.objects.filter(target_id=str(meter.pk)).order_by("at", "id"))
    assert [entry.action for entry in history] == ["deactivate", "reactivate"]
    assert history[0].changes["status"] == ["active", "inactive"]
    assert history[1].changes["deactivated_at"] == [deactivated_at.isoformat(), None]


def test_deactivating_twice_is_refused(admin_role_user: User) -> None:
    meter = meter_deactivate(meter=MeterFactory.create(), actor=admin_role_user)
    with pytest.raises(ValidationError) as caught:
        meter_deactivate(meter=meter, actor=admin_role_user)
    assert caught.value.code == "meter_already_inactive"
    with pytest.raises(ValidationError):
        meter_reactivate(meter=meter_reactivate(meter=meter, actor=None), actor=None)
    assert AuditEntry.objects.filter(action="deactivate").count() == 1
