"""Django admin for superusers: customers, changed only through the services. Staff use the
portal's own pages.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.contrib import admin
from django.http import HttpRequest

from customers import services as customer_services
from customers.models import Customer
from usage_portal.admin import ReadOnlyAdmin, staff_user


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ("external_id", "name", "email", "created")
    search_fields = ("external_id", "name", "email")
    readonly_fields = ("created",)

    def get_readonly_fields(self, request: HttpRequest, obj: Customer | None = None) -> Any:
        return self.readonly_fields if obj is None else ("external_id", *self.readonly_fields)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Customer, form: Any, change: bool) -> None:
        if change:
            saved = customer_services.customer_update(
                customer=obj,
                actor=staff_user(request),
                name=obj.name,
                email=obj.email,
                metadata=obj.metadata,
            )
        else:
            saved = customer_services.customer_create(
                actor=staff_user(request),
                external_id=obj.external_id,
                name=obj.name,
                email=obj.email,
                metadata=obj.metadata,
            )
        obj.pk = saved.pk


# Keep this last: any customers model without an admin above gets a read-only one, so a new model
# is never missing from the admin. Register it explicitly above to give it a better page.
for _model in apps.get_app_config("customers").get_models():
    if not admin.site.is_registered(_model):
        admin.site.register(_model, ReadOnlyAdmin)
