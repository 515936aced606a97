from __future__ import annotations

from django.urls import path

from events import views

app_name = "events"

urlpatterns = [
    path("events/", views.event_list, name="event_list"),
    path("events/new/", views.event_entry, name="event_entry"),
    path("events/customer-options/", views.event_customer_options, name="event_customer_options"),
    path("events/<int:pk>/cancel/", views.event_cancel, name="event_cancel"),
]
