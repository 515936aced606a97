from __future__ import annotations

from django.urls import path

from meters.views import customers, events, meters, usage

app_name = "meters"

urlpatterns = [
    # Meters (meters/views/meters.py)
    path("meters/", meters.meter_list, name="meter_list"),
    path("meters/new/", meters.meter_create, name="meter_create"),
    path("meters/<str:meter_id>/", meters.meter_detail, name="meter_detail"),
    path("meters/<str:meter_id>/edit/", meters.meter_edit, name="meter_edit"),
    path("meters/<str:meter_id>/deactivate/", meters.meter_deactivate, name="meter_deactivate"),
    path("meters/<str:meter_id>/reactivate/", meters.meter_reactivate, name="meter_reactivate"),
    # Customers (meters/views/customers.py)
    path("customers/", customers.customer_list, name="customer_list"),
    path("customers/new/", customers.customer_create, name="customer_create"),
    path("customers/import/", customers.customer_import, name="customer_import"),
    path("customers/<int:pk>/", customers.customer_detail, name="customer_detail"),
    path("customers/<int:pk>/edit/", customers.customer_edit, name="customer_edit"),
    # Events: explorer, manual entry, cancellation (meters/views/events.py)
    path("events/", events.event_list, name="event_list"),
    path("events/new/", events.event_entry, name="event_entry"),
    path(
        "events/customer-options/",
        events.event_customer_options,
        name="event_customer_options",
    ),
    path("events/<int:pk>/cancel/", events.event_cancel, name="event_cancel"),
    # Usage and alerts (meters/views/usage.py)
    path("customers/<int:pk>/usage/", usage.customer_usage, name="customer_usage"),
    path("customers/<int:pk>/usage/<str:meter_id>/", usage.usage_explain, name="usage_explain"),
    path("meters/<str:meter_id>/overview/", usage.meter_overview, name="meter_overview"),
    path("meters/<str:meter_id>/live/", usage.meter_live_feed, name="meter_live_feed"),
    path("alerts/", usage.alert_list, name="alert_list"),
    path("alerts/new/", usage.alert_create, name="alert_create"),
    path("alerts/<int:pk>/", usage.alert_detail, name="alert_detail"),
    path("alerts/<int:pk>/status/", usage.alert_status, name="alert_status"),
]
