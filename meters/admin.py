"""Django admin for superusers: meters, changed only through the services (same validation, same
audit trail). Staff use the portal's own pages.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.contrib import admin
from django.http import HttpRequest

from meters.models import Meter
from meters.services import METER_IMMUTABLE_FIELDS, meter_create, meter_update
from usage_portal.admin import ReadOnlyAdmin, staff_user


@admin.register(Meter)
class MeterAdmin(admin.ModelAdmin):
    list_display = ("display_name", "event_name", "aggregation_formula", "status", "meter_id")
    list_filter = ("status", "aggregation_formula", "event_time_window")
    search_fields = ("display_name", "event_name", "meter_id")
    readonly_fields = ("meter_id", "status", "deactivated_at", "created", "updated")

    def get_readonly_fields(self, request: HttpRequest, obj: Meter | None = None) -> Any:
        if obj is None:
            return self.readonly_fields
        return (*self.readonly_fields, *METER_IMMUTABLE_FIELDS)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Meter, form: Any, change: bool) -> None:
        if change:
            saved = meter_update(
                meter=obj, actor=staff_user(request), display_name=obj.display_name
            )
        else:
            saved = meter_create(
                actor=staff_user(request),
                display_name=obj.display_name,
                event_name=obj.event_name,
                aggregation_formula=obj.aggregation_formula,
                customer_mapping_key=obj.customer_mapping_key,
                value_settings_key=obj.value_settings_key,
                event_time_window=obj.event_time_window,
            )
        obj.pk, obj.meter_id = saved.pk, saved.meter_id


# Keep this last: any meters model without an admin above gets a read-only one, so a new model
# is never missing from the admin. Register it explicitly above to give it a better page.
for _model in apps.get_app_config("meters").get_models():
    if not admin.site.is_registered(_model):
        admin.site.register(_model, ReadOnlyAdmin)
