from __future__ import annotations

from django.urls import path

from meters.views import customers, events, meters

app_name = "meters"

urlpatterns = [
    # Meters (meters/views/meters.py)
    # Customers (meters/views/customers.py)
    # Events: explorer, manual entry, cancellation (meters/views/events.py)
]
