"""Django admin for superusers: usage alerts, their triggers and delivery attempts, read-only
(defined on the portal's pages). Staff use the portal's own pages.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.contrib import admin
from django.http import HttpRequest

from alerts.models import AlertDeliveryAttempt, UsageAlert, UsageAlertTrigger
from usage_portal.admin import ReadOnlyAdmin


# --- Usage alerts: defined and changed on the portal's alert pages (through the services);
# the admin shows them, their triggers and delivery attempts read-only.
class AlertDeliveryAttemptInline(admin.TabularInline):
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


# Keep this last: any alerts model without an admin above gets a read-only one, so a new model
# is never missing from the admin. Register it explicitly above to give it a better page.
for _model in apps.get_app_config("alerts").get_models():
    if not admin.site.is_registered(_model):
        admin.site.register(_model, ReadOnlyAdmin)
