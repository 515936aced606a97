"""A database made before the apps were split (every model in ``meters``) migrates in place: its
events, rollups, uploads, audit trail and alerts are all there afterwards, through the models'
new apps, with the same values and relations; content types and audit entries follow the models.

The test migrates the test database back to the pre-split leaf migrations, writes rows through
the historical models of that state, and migrates forward to the latest. On either database:
the PostgreSQL-only steps of the migrations are guarded by vendor."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.state import StateApps

from alerts.models import UsageAlert
from customers.models import Customer
from events.models import (
    EventBatch,
    EventRejection,
    MeterEvent,
    StoredIdentifierSet,
    UsageRollup,
)
from meters.models import Meter
from uploads.models import Upload
from usage_portal.models import AuditEntry

# The leaf migrations before the split, and the apps that did not exist yet.
PRE_SPLIT: list[tuple[str, str | None]] = [
    ("meters", "0008_event_identifier_binary_batch_brin"),
    ("uploads", "0003_committed_ranges"),
    ("billing", "0001_initial"),
    ("usage_portal", "0001_roles"),
    ("customers", None),
    ("events", None),
    ("usage", None),
    ("alerts", None),
]
HOUR = datetime(2026, 3, 10, 9, tzinfo=UTC)

# (pre-split model name in meters, the model now) for every table the test writes.
MOVED = [
    ("customer", Customer),
    ("eventbatch", EventBatch),
    ("meterevent", MeterEvent),
    ("usagerollup", UsageRollup),
    ("eventrejection", EventRejection),
    ("auditentry", AuditEntry),
    ("usagealert", UsageAlert),
]


def rows_of(model: type[Any]) -> list[dict[str, object]]:
    """Every row of a model's table, column by column (foreign keys as their ids). A current
    model or a historical one (``StateApps.get_model`` is typed ``type[Any]``)."""
    return list(model.objects.order_by("pk").values())


def latest_leaves() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


@pytest.fixture
def migrate(
    transactional_db: None,
) -> Iterator[Callable[[Sequence[tuple[str, str | None]]], StateApps]]:
    """``migrate(targets)`` moves the test database to ``targets`` and returns the historical
    models of that state (``StateApps``, whose ``get_model`` django-stubs types ``type[Any]``,
    not as today's models). Whatever happens, the database is left at the latest migrations.

    Django's MigrationExecutor, not django-test-migrations: its ``apply_initial_migration``
    rebuilds the database along the full plan cut after the furthest target, and in this
    graph the new apps' first migrations come before ``uploads.0003``, so its "pre-split"
    database would have them applied already."""

    def to(targets: Sequence[tuple[str, str | None]]) -> StateApps:
        executor = MigrationExecutor(connection)
        state = executor.migrate(targets)
        return state.apps

    yield to
    ContentType.objects.clear_cache()
    call_command("migrate", verbosity=0)
    ContentType.objects.clear_cache()


def pre_split_rows(apps: StateApps) -> dict[str, int]:
    """A meter, a customer, an upload's batch with events and a rejection, hourly rollups, an
    audit entry, a usage alert, and the content type of Customer with a permission: written
    as the pre-split code wrote them. Returns the primary keys the test checks by name."""
    user_model = apps.get_model("auth", "User")
    content_type_model = apps.get_model("contenttypes", "ContentType")
    permission_model = apps.get_model("auth", "Permission")
    meter_model = apps.get_model("meters", "Meter")
    customer_model = apps.get_model("meters", "Customer")
    batch_model = apps.get_model("meters", "EventBatch")
    event_model = apps.get_model("meters", "MeterEvent")
    rollup_model = apps.get_model("meters", "UsageRollup")
    rejection_model = apps.get_model("meters", "EventRejection")
    audit_model = apps.get_model("meters", "AuditEntry")
    alert_model = apps.get_model("meters", "UsageAlert")
    upload_model = apps.get_model("uploads", "Upload")

    user = user_model.objects.create(username="pre-split-user", password="!")
    meter = meter_model.objects.create(
        display_name="API calls", event_name="api_calls", aggregation_formula="sum"
    )
    other_meter = meter_model.objects.create(
        display_name="Seats", event_name="seats", aggregation_formula="last"
    )
    customer = customer_model.objects.create(
        external_id="cus_pre_split", name="Acme", email="billing@acme.example", metadata={"a": 1}
    )
    batch = batch_model.objects.create(source="csv", user=user)
    received = HOUR + timedelta(hours=5)
    values = [Decimal("1.5"), Decimal("-0.25"), Decimal("12345678901234.000001")]
    events = [
        event_model.objects.create(
            identifier=f"evt-{index}",
            meter=meter,
            customer=customer,
            timestamp=HOUR + timedelta(minutes=10 * index),
            value=value,
            payload={"stripe_customer_id": "cus_pre_split", "value": str(value)},
            batch=batch,
            line=index + 2,
            received_at=received,
        )
        for index, value in enumerate(values)
    ]
    seat = event_model.objects.create(
        identifier="seat-1",
        meter=other_meter,
        customer=customer,
        timestamp=HOUR + timedelta(hours=1, minutes=5),
        value=Decimal("7"),
        payload={"stripe_customer_id": "cus_pre_split", "value": "7"},
        batch=batch,
        line=5,
        received_at=received,
    )
    rollup_model.objects.create(
        meter=meter,
        customer=customer,
        hour=HOUR,
        value_sum=sum(values),
        event_count=len(values),
        last_value=values[-1],
        last_timestamp=events[-1].timestamp,
        last_event_id=events[-1].pk,
    )
    rollup_model.objects.create(
        meter=other_meter,
        customer=customer,
        hour=HOUR + timedelta(hours=1),
        value_sum=Decimal("7"),
        event_count=1,
        last_value=Decimal("7"),
        last_timestamp=seat.timestamp,
        last_event_id=seat.pk,
    )
    rejection_model.objects.create(
        batch=batch,
        line=6,
        column="value",
        code="invalid_value",
        message="Not a number.",
        identifier="evt-bad",
        event_name="api_calls",
        meter=meter,
        customer_ref="cus_pre_split",
        raw={"value": "abc"},
    )
    upload = upload_model.objects.create(
        original_name="usage.csv",
        size_bytes=1234,
        uploaded_by=user,
        batch=batch,
        status="succeeded_with_errors",
        rows_total=5,
        rows_read=5,
        rows_imported=4,
        rows_failed=1,
        records_committed=5,
        committed_ranges=[[0, 5]],
    )
    audit = audit_model.objects.create(
        target_type="meters.customer",
        target_id=str(customer.pk),
        action="create",
        actor=user,
        changes={"name": [None, "Acme"]},
    )
    meter_audit = audit_model.objects.create(
        target_type="meters.meter", target_id=str(meter.pk), action="create", actor=user
    )
    alert = alert_model.objects.create(
        title="Big spender",
        meter=meter,
        customer=customer,
        threshold=Decimal("1000.50"),
        created_by=user,
    )
    content_type, _ = content_type_model.objects.get_or_create(app_label="meters", model="customer")
    permission, _ = permission_model.objects.get_or_create(
        content_type=content_type, codename="view_customer", defaults={"name": "Can view"}
    )
    return {
        "meter": meter.pk,
        "customer": customer.pk,
        "batch": batch.pk,
        "upload": upload.pk,
        "audit": audit.pk,
        "meter_audit": meter_audit.pk,
        "alert": alert.pk,
        "content_type": content_type.pk,
        "permission": permission.pk,
        "user": user.pk,
    }


def test_a_pre_split_database_keeps_its_rows_through_the_split(migrate) -> None:
    old = migrate(PRE_SPLIT)
    with pytest.raises(LookupError):
        old.get_model("customers", "Customer")  # the pre-split state: every model in meters
    keys = pre_split_rows(old)
    before = {name: rows_of(old.get_model("meters", name)) for name, _ in MOVED}
    uploads_before = rows_of(old.get_model("uploads", "Upload"))

    migrate(latest_leaves())

    assert MigrationExecutor(connection).migration_plan(latest_leaves()) == []
    ContentType.objects.clear_cache()
    after = {name: rows_of(model) for name, model in MOVED}
    # The audit trail names its targets by their new app; nothing else changes.
    for row in before["auditentry"]:
        if row["target_type"] == "meters.customer":
            row["target_type"] = "customers.customer"
    # Columns added since the split: no event was released, and the upload, made before
    # the question was asked, keeps the identifiers derived from its rows' content.
    assert {row.pop("released_identifier") for row in after["meterevent"]} == {None}
    uploads_after = rows_of(Upload)
    assert {row.pop("rows_without_identifier") for row in uploads_after} == {"corrected_copy"}
    # Nor was its import pass marked (the live rate's start).
    marks = {(row.pop("import_started_at"), row.pop("import_start_rows")) for row in uploads_after}
    assert marks == {(None, 0)}
    # Files uploaded before S3 import were CSV.
    assert {row.pop("file_format") for row in uploads_after} == {"csv"}
    assert after == before
    assert uploads_after == uploads_before
    assert len(after["meterevent"]) == 4 and len(after["usagerollup"]) == 2

    # Relations, followed through the current models.
    upload = Upload.objects.get(pk=keys["upload"])
    assert upload.batch.pk == keys["batch"] and upload.batch.upload == upload
    assert sorted(upload.batch.events.values_list("identifier", flat=True)) == [
        "evt-0",
        "evt-1",
        "evt-2",
        "seat-1",
    ]
    customer = Customer.objects.get(pk=keys["customer"])
    assert customer.external_id == "cus_pre_split"
    sums = {
        event.identifier: (event.meter.event_name, event.customer, event.value)
        for event in MeterEvent.objects.select_related("meter", "customer")
    }
    assert sums["evt-2"] == ("api_calls", customer, Decimal("12345678901234.000001"))
    rollup = UsageRollup.objects.get(meter_id=keys["meter"], hour=HOUR)
    assert (rollup.customer, rollup.value_sum, rollup.event_count) == (
        customer,
        Decimal("12345678901235.250001"),
        3,
    )
    assert rollup.last_event_id is not None
    assert MeterEvent.objects.get(pk=rollup.last_event_id).identifier == "evt-2"
    alert = UsageAlert.objects.get(pk=keys["alert"])
    assert (alert.meter, alert.customer, alert.threshold) == (
        Meter.objects.get(pk=keys["meter"]),
        customer,
        Decimal("1000.50"),
    )
    assert EventRejection.objects.get().batch.upload == upload

    audit = AuditEntry.objects.get(pk=keys["audit"])
    assert (audit.target_type, audit.target_id) == ("customers.customer", str(customer.pk))
    assert audit.actor_id == keys["user"]
    assert AuditEntry.objects.get(pk=keys["meter_audit"]).target_type == "meters.meter"

    # The same content type row, now under the new app label, keeps its permissions.
    content_type = ContentType.objects.get_for_model(Customer)
    assert (content_type.pk, content_type.app_label) == (keys["content_type"], "customers")
    assert not ContentType.objects.filter(app_label="meters", model="customer").exists()
    assert Permission.objects.get(pk=keys["permission"]).content_type == content_type


def test_uploads_reverted_before_release_their_identifiers_and_statuses_tell_the_truth(
    migrate,
) -> None:
    before = [("uploads", "0004_events_app"), ("events", "0001_initial")]
    old = migrate(before)
    user = old.get_model("auth", "User").objects.create(username="olga")
    meter = old.get_model("meters", "Meter").objects.create(
        meter_id="mtr_old", display_name="Old", event_name="old_calls"
    )
    customer = old.get_model("customers", "Customer").objects.create(external_id="cus_old")
    batches = old.get_model("events", "EventBatch").objects
    upload_model = old.get_model("uploads", "Upload")
    at = datetime(2026, 3, 10, 9, tzinfo=UTC)

    def upload(name: str, **fields: object) -> Any:
        batch = batches.create(source="csv", user=user, dry_run=bool(fields.get("validate_only")))
        return upload_model.objects.create(
            original_name=name, size_bytes=1, uploaded_by=user, batch=batch, **fields
        )

    reverted = upload("reverted.csv", status="succeeded", rows_imported=1, reverted_at=at)
    old.get_model("events", "MeterEvent").objects.create(
        identifier="csv_reverted_1",
        meter=meter,
        customer=customer,
        timestamp=at,
        value=Decimal(1),
        batch=reverted.batch,
        received_at=at,
        cancelled_at=at,
        cancelled_by=user,
    )
    checked = upload("checked.csv", status="succeeded_with_errors", validate_only=True)
    all_failed = upload("bad.csv", status="succeeded_with_errors", rows_failed=3)
    nothing_new = upload("again.csv", status="succeeded", rows_duplicate=2)
    old.get_model("events", "StoredIdentifierSet").objects.create(digest="d" * 64, events=1)

    migrate(latest_leaves())

    event = MeterEvent.objects.get(batch_id=reverted.batch_id)
    assert (event.released_identifier, len(event.identifier)) == ("csv_reverted_1", 101)
    assert not MeterEvent.objects.filter(identifier="csv_reverted_1").exists()
    statuses = dict(Upload.objects.values_list("original_name", "status"))
    assert statuses == {
        "reverted.csv": "succeeded",
        "checked.csv": "validated",
        "bad.csv": "failed",
        "again.csv": "nothing_new",
    }
    assert Upload.objects.get(pk=checked.pk).can_import is False  # no stored file here
    assert "No row was imported" in Upload.objects.get(pk=all_failed.pk).failed_reason
    assert Upload.objects.get(pk=nothing_new.pk).rows_without_identifier == "corrected_copy"
    assert not StoredIdentifierSet.objects.exists()
