"""Django admin for superusers. Finalized invoices and ledger entries are read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from billing.models import (
    CreditGrant,
    CreditTransaction,
    Invoice,
    InvoiceLine,
    Price,
    Subscription,
    SubscriptionItem,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["price_id", "nickname", "meter", "pricing_model", "currency", "active"]
    list_filter = ["pricing_model", "usage_type", "active", "currency"]
    search_fields = ["price_id", "nickname"]
    # Pricing never changes once created (a change makes a new price).
    readonly_fields = [
        "price_id",
        "currency",
        "usage_type",
        "meter",
        "pricing_model",
        "unit_amount_decimal",
        "package_size",
        "package_rounding",
        "tiers",
        "replaces",
        "created_by",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # create prices on the portal's form, which validates them


class SubscriptionItemInline(admin.TabularInline):
    model = SubscriptionItem
    extra = 0
    raw_id_fields = ["price"]


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ["subscription_id", "customer", "interval", "interval_count", "ends_at"]
    search_fields = ["subscription_id", "customer__external_id"]
    raw_id_fields = ["customer", "created_by"]
    inlines = [SubscriptionItemInline]


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    readonly_fields = [f.name for f in InvoiceLine._meta.fields]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ["invoice_id", "customer", "period_start", "period_end", "status", "total"]
    list_filter = ["status"]
    search_fields = ["invoice_id", "customer__external_id"]
    inlines = [InvoiceLineInline]


@admin.register(CreditGrant)
class CreditGrantAdmin(admin.ModelAdmin):
    list_display = ["grant_id", "customer", "amount", "currency", "priority", "category"]
    search_fields = ["grant_id", "customer__external_id", "name"]
    raw_id_fields = ["customer", "created_by"]
    readonly_fields = ["amount", "currency", "voided_at"]


@admin.register(CreditTransaction)
class CreditTransactionAdmin(ReadOnlyAdmin):
    list_display = ["grant", "kind", "type", "amount", "invoice", "at"]
    list_filter = ["type"]
