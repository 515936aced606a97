"""Django admin for superusers: every model of the meters app.

Staff use the portal's own pages. The admin is a superuser's window onto the data, so it
changes meters and customers only through the services (same validation, same audit trail),
and shows events, rollups, batches, rejections and the audit trail read-only: only the
ingestion core writes events and rollups, and the audit trail is never edited.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import User
from django.http import HttpRequest

from meters import services
from meters.models import (
    AlertDeliveryAttempt,
    AuditEntry,
    Customer,
    EventBatch,
    EventRejection,
    Meter,
    MeterDailyRollup,
    MeterEvent,
    MeterMonthlyRollup,
    MeterUsageTotal,
    StaleUsageDay,
    StoredIdentifierSet,
    UsageAlert,
    UsageAlertTrigger,
    UsageRollup,
)


def _staff_user(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Meter)
class MeterAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("display_name", "event_name", "aggregation_formula", "status", "meter_id")
    list_filter = ("status", "aggregation_formula", "event_time_window")
    search_fields = ("display_name", "event_name", "meter_id")
    readonly_fields = ("meter_id", "status", "deactivated_at", "created", "updated")

    def get_readonly_fields(self, request: HttpRequest, obj: Meter | None = None) -> Any:
        if obj is None:
            return self.readonly_fields
        return (*self.readonly_fields, *services.METER_IMMUTABLE_FIELDS)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Meter, form: Any, change: bool) -> None:
        if change:
            saved = services.meter_update(
                meter=obj, actor=_staff_user(request), display_name=obj.display_name
            )
        else:
            saved = services.meter_create(
                actor=_staff_user(request),
                display_name=obj.display_name,
                event_name=obj.event_name,
                aggregation_formula=obj.aggregation_formula,
                customer_mapping_key=obj.customer_mapping_key,
                value_settings_key=obj.value_settings_key,
                event_time_window=obj.event_time_window,
            )
        obj.pk, obj.meter_id = saved.pk, saved.meter_id


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("external_id", "name", "email", "created")
    search_fields = ("external_id", "name", "email")
    readonly_fields = ("created",)

    def get_readonly_fields(self, request: HttpRequest, obj: Customer | None = None) -> Any:
        return self.readonly_fields if obj is None else ("external_id", *self.readonly_fields)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Customer, form: Any, change: bool) -> None:
        if change:
            saved = services.customer_update(
                customer=obj,
                actor=_staff_user(request),
                name=obj.name,
                email=obj.email,
                metadata=obj.metadata,
            )
        else:
            saved = services.customer_create(
                actor=_staff_user(request),
                external_id=obj.external_id,
                name=obj.name,
                email=obj.email,
                metadata=obj.metadata,
            )
        obj.pk = saved.pk


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("at", "target_type", "target_id", "action", "actor")
    list_filter = ("target_type", "action")
    search_fields = ("target_id", "actor__username")
    date_hierarchy = "at"


@admin.register(EventBatch)
class EventBatchAdmin(ReadOnlyAdmin):
    list_display = ("id", "source", "user", "dry_run", "created")
    list_filter = ("source", "dry_run")


@admin.register(MeterEvent)
class MeterEventAdmin(ReadOnlyAdmin):
    list_display = ("identifier", "meter", "customer", "timestamp", "value", "cancelled_at")
    list_filter = ("meter",)
    search_fields = ("identifier",)
    list_select_related = ("meter", "customer")
    raw_id_fields = ("meter", "customer", "batch", "cancelled_by")
    show_full_result_count = False  # COUNT(*) over millions of events is slow


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin):
    list_display = ("meter", "customer", "hour", "value_sum", "event_count", "last_value")
    list_select_related = ("meter", "customer")
    raw_id_fields = ("meter", "customer")
    show_full_result_count = False


# The meter overview's daily rollups (meters/day_rollups.py): derived from the hourly rollups,
# written only by the refresh, so read-only here.
@admin.register(MeterDailyRollup, MeterMonthlyRollup)
class PeriodRollupAdmin(ReadOnlyAdmin):
    list_display = ("meter", "customer", "__str__", "value_sum", "event_count", "last_value")
    list_filter = ("meter",)
    list_select_related = ("meter", "customer")
    raw_id_fields = ("meter", "customer")
    show_full_result_count = False


@admin.register(MeterUsageTotal)
class MeterUsageTotalAdmin(ReadOnlyAdmin):
    list_display = ("meter", "grain", "start", "value_sum", "event_count", "last_sum")
    list_filter = ("meter", "grain")
    show_full_result_count = False


@admin.register(StaleUsageDay)
class StaleUsageDayAdmin(ReadOnlyAdmin):
    list_display = ("meter", "day")
    list_filter = ("meter",)


@admin.register(StoredIdentifierSet)
class StoredIdentifierSetAdmin(ReadOnlyAdmin):
    list_display = ("digest", "events", "created")
    search_fields = ("digest",)
    show_full_result_count = False


@admin.register(EventRejection)
class EventRejectionAdmin(ReadOnlyAdmin):
    list_display = ("batch", "line", "code", "identifier", "event_name", "created")
    list_filter = ("code",)
    search_fields = ("identifier", "event_name", "customer_ref")
    raw_id_fields = ("batch", "meter")
    show_full_result_count = False


# --- Usage alerts: defined and changed on the portal's alert pages (through the services);
# the admin shows them, their triggers and delivery attempts read-only.
class AlertDeliveryAttemptInline(admin.TabularInline):  # type: ignore[type-arg]
    model = AlertDeliveryAttempt
    extra = 0
    can_delete = False
    readonly_fields = (
        "attempt",
        "at",
        "url",
        "status_code",
        "succeeded",
        "error",
        "duration_ms",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UsageAlert)
class UsageAlertAdmin(ReadOnlyAdmin):
    list_display = ("alert_id", "title", "meter", "customer", "threshold", "status", "created")
    list_filter = ("status",)
    search_fields = ("alert_id", "title")
    raw_id_fields = ("meter", "customer", "created_by")


@admin.register(UsageAlertTrigger)
class UsageAlertTriggerAdmin(ReadOnlyAdmin):
    list_display = ("alert", "customer", "value", "triggered_at", "delivery_status")
    list_filter = ("delivery_status",)
    list_select_related = ("alert", "customer")
    raw_id_fields = ("alert", "customer")
    inlines = (AlertDeliveryAttemptInline,)


# Keep this last: any meters model without an admin above gets a read-only one, so a new model
# is never missing from the admin. Register it explicitly above to give it a better page.
for _model in apps.get_app_config("meters").get_models():
    if not admin.site.is_registered(_model):
        admin.site.register(_model, ReadOnlyAdmin)
