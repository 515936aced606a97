"""Django admin for superusers: events, batches, rejections and hourly rollups, read-only: only the
ingestion core writes them. Staff use the portal's own pages.
"""

from __future__ import annotations

from django.apps import apps
from django.contrib import admin

from events.models import EventBatch, EventRejection, MeterEvent, StoredIdentifierSet, UsageRollup
from usage_portal.admin import ReadOnlyAdmin


@admin.register(EventBatch)
class EventBatchAdmin(ReadOnlyAdmin):
    list_display = ("id", "source", "user", "dry_run", "created")
    list_filter = ("source", "dry_run")


@admin.register(MeterEvent)
class MeterEventAdmin(ReadOnlyAdmin):
    list_display = ("shown_identifier", "meter", "customer", "timestamp", "value", "cancelled_at")
    list_filter = ("meter",)
    search_fields = ("identifier", "released_identifier")
    list_select_related = ("meter", "customer")
    raw_id_fields = ("meter", "customer", "batch", "cancelled_by")
    show_full_result_count = False  # COUNT(*) over millions of events is slow


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin):
    list_display = ("meter", "customer", "hour", "value_sum", "event_count", "last_value")
    list_select_related = ("meter", "customer")
    raw_id_fields = ("meter", "customer")
    show_full_result_count = False


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


# Keep this last: any events model without an admin above gets a read-only one, so a new model
# is never missing from the admin. Register it explicitly above to give it a better page.
for _model in apps.get_app_config("events").get_models():
    if not admin.site.is_registered(_model):
        admin.site.register(_model, ReadOnlyAdmin)
