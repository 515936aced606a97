from __future__ import annotations

from django.urls import path

from meters.views import customers, events, meters

app_name = "meters"

urlpatterns = [
    # Meters (meters/views/meters.py)
    path("meters/", meters.meter_list, name="meter_list"),
    # Customers (meters/views/customers.py)
    path("customers/", customers.customer_list, name="customer_list"),
    # Events: explorer, manual entry, cancellation (meters/views/events.py)
    path("events/", events.event_list, name="event_list"),
]
