"""Django admin for superusers: daily and monthly rollups and totals, read-only. Staff use the
portal's own pages.
"""

from __future__ import annotations

from django.apps import apps
from django.contrib import admin

from usage.models import MeterDailyRollup, MeterMonthlyRollup, MeterUsageTotal, StaleUsageDay
from usage_portal.admin import ReadOnlyAdmin


# Derived from the hourly rollups, written only by the refresh (usage/rollups.py).
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


# Keep this last: any usage model without an admin above gets a read-only one, so a new model
# is never missing from the admin. Register it explicitly above to give it a better page.
for _model in apps.get_app_config("usage").get_models():
    if not admin.site.is_registered(_model):
        admin.site.register(_model, ReadOnlyAdmin)
