from __future__ import annotations

from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("prices/", views.price_list, name="price_list"),
    path("prices/new/", views.price_create, name="price_create"),
    path("prices/example/", views.price_example, name="price_example"),
    path("prices/<int:price_pk>/", views.price_detail, name="price_detail"),
    path("prices/<int:price_pk>/archive/", views.price_archive, name="price_archive"),
    path("prices/<int:price_pk>/unarchive/", views.price_unarchive, name="price_unarchive"),
    path("customers/<int:customer_pk>/", views.customer_billing, name="customer_billing"),
    path(
        "customers/<int:customer_pk>/estimate/",
        views.customer_estimate,
        name="customer_estimate",
    ),
    path(
        "customers/<int:customer_pk>/late-usage/",
        views.customer_late_usage,
        name="customer_late_usage",
    ),
    path(
        "customers/<int:customer_pk>/subscriptions/new/",
        views.subscription_create,
        name="subscription_create",
    ),
    path("customers/<int:customer_pk>/invoices/", views.invoice_list, name="invoice_list"),
    path(
        "customers/<int:customer_pk>/credits/new/",
        views.credit_grant_create,
        name="credit_grant_create",
    ),
    path(
        "subscriptions/<int:subscription_pk>/",
        views.subscription_detail,
        name="subscription_detail",
    ),
    path(
        "subscriptions/<int:subscription_pk>/cancel/",
        views.subscription_cancel,
        name="subscription_cancel",
    ),
    path(
        "subscriptions/<int:subscription_pk>/resume/",
        views.subscription_resume,
        name="subscription_resume",
    ),
    path("invoices/<int:invoice_pk>/", views.invoice_detail, name="invoice_detail"),
    path("credits/<int:grant_pk>/void/", views.credit_grant_void, name="credit_grant_void"),
]
