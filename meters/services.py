"""Writes for meters.

Each function is keyword-only, runs in one transaction, validates before writing and raises
``ValidationError`` (with a code) that forms and the API show as they are. Every change
records an ``AuditEntry`` through ``audit_record`` with ``changes = {field: [old, new]}``.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from meters.models import Meter
from usage_portal.audit import audit_diff, audit_record
from usage_portal.models import AuditEntry

# --- Meters ----------------------------------------------------------------------------------

METER_FIELD_LABELS = {
    "event_name": "Event name",
    "aggregation_formula": "Aggregation formula",
    "customer_mapping_key": "Customer payload key",
    "value_settings_key": "Value payload key",
    "event_time_window": "Event time window",
}
METER_IMMUTABLE_FIELDS = (
    "event_name",
    "aggregation_formula",
    "customer_mapping_key",
    "value_settings_key",
    "event_time_window",
)


def meter_event_name_taken_error(existing: Meter) -> ValidationError:
    state = "" if existing.is_active else " (inactive)"
    return ValidationError(
        "Event name “%(event_name)s” is already used by meter “%(display_name)s” "
        "(%(meter_id)s)%(state)s. Event names are unique across all meters, active or not.",
        code="duplicate_event_name",
        params={
            "event_name": existing.event_name,
            "display_name": existing.display_name,
            "meter_id": existing.meter_id,
            "state": state,
        },
    )


def _check_event_name_free(event_name: str) -> None:
    existing = Meter.objects.filter(event_name=event_name).first()
    if existing is not None:
        raise ValidationError({"event_name": meter_event_name_taken_error(existing)})


@transaction.atomic
def meter_create(
    *,
    actor: User | None,
    display_name: str,
    event_name: str,
    aggregation_formula: str = Meter.Formula.SUM,
    customer_mapping_key: str = "stripe_customer_id",
    value_settings_key: str = "value",
    event_time_window: str = "",
) -> Meter:
    meter = Meter(
        display_name=display_name.strip(),
        event_name=event_name.strip(),
        aggregation_formula=aggregation_formula,
        customer_mapping_key=customer_mapping_key.strip(),
        value_settings_key=value_settings_key.strip(),
        event_time_window=event_time_window or "",
    )
    # The unique check by full_clean would say only "already exists"; ours names the meter.
    meter.full_clean(validate_constraints=False)
    _check_event_name_free(meter.event_name)
    try:
        with transaction.atomic():
            meter.save()
    except IntegrityError as error:
        # Lost a race with another create of the same event name.
        existing = Meter.objects.filter(event_name=meter.event_name).first()
        if existing is None:
            raise
        raise ValidationError({"event_name": meter_event_name_taken_error(existing)}) from error
    audit_record(
        target=meter,
        action=AuditEntry.Action.CREATE,
        actor=actor,
        changes={
            name: [None, getattr(meter, name)]
            for name in ("meter_id", "display_name", *METER_IMMUTABLE_FIELDS, "status")
        },
    )
    return meter


def _locked_meter(meter: Meter) -> Meter:
    return Meter.objects.select_for_update().get(pk=meter.pk)


@transaction.atomic
def meter_update(
    *,
    meter: Meter,
    actor: User | None,
    display_name: str | None = None,
    event_name: str | None = None,
    aggregation_formula: str | None = None,
    customer_mapping_key: str | None = None,
    value_settings_key: str | None = None,
    event_time_window: str | None = None,
) -> Meter:
    """Change a meter. As on Stripe, only ``display_name`` may change after creation; the
    other arguments are accepted so a caller passing them unchanged is fine, and any real
    change to them is refused with code ``immutable_field``."""
    locked = _locked_meter(meter)
    requested = {
        "event_name": event_name,
        "aggregation_formula": aggregation_formula,
        "customer_mapping_key": customer_mapping_key,
        "value_settings_key": value_settings_key,
        "event_time_window": event_time_window,
    }
    refused = {
        name: ValidationError(
            "%(label)s can't be changed after the meter is created; only the display name can.",
            code="immutable_field",
            params={"label": METER_FIELD_LABELS[name]},
        )
        for name, value in requested.items()
        if value is not None and value != getattr(locked, name)
    }
    if refused:
        raise ValidationError(refused)
    if display_name is None:
        return locked
    changes = audit_diff(locked, {"display_name": display_name.strip()})
    if not changes:
        return locked
    locked.display_name = display_name.strip()
    locked.full_clean(validate_constraints=False)
    locked.save(update_fields=["display_name", "updated"])
    audit_record(target=locked, action=AuditEntry.Action.UPDATE, actor=actor, changes=changes)
    return locked


@transaction.atomic
def meter_deactivate(*, meter: Meter, actor: User | None) -> Meter:
    """Stop accepting events for the meter. Its events and usage stay."""
    locked = _locked_meter(meter)
    if not locked.is_active:
        raise ValidationError("This meter is already inactive.", code="meter_already_inactive")
    now = timezone.now()
    audit_record(
        target=locked,
        action=AuditEntry.Action.DEACTIVATE,
        actor=actor,
        changes={"status": ["active", "inactive"], "deactivated_at": [None, now]},
    )
    locked.status = Meter.Status.INACTIVE
    locked.deactivated_at = now
    locked.save(update_fields=["status", "deactivated_at", "updated"])
    return locked


@transaction.atomic
def meter_reactivate(*, meter: Meter, actor: User | None) -> Meter:
    locked = _locked_meter(meter)
    if locked.is_active:
        raise ValidationError("This meter is already active.", code="meter_already_active")
    audit_record(
        target=locked,
        action=AuditEntry.Action.REACTIVATE,
        actor=actor,
        changes={"status": ["inactive", "active"], "deactivated_at": [locked.deactivated_at, None]},
    )
    locked.status = Meter.Status.ACTIVE
    locked.deactivated_at = None
    locked.save(update_fields=["status", "deactivated_at", "updated"])
    return locked
