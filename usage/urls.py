from __future__ import annotations

from django.urls import path

from usage import views

app_name = "usage"

urlpatterns = [
    path("customers/<int:pk>/usage/", views.customer_usage, name="customer_usage"),
    path("customers/<int:pk>/usage/<str:meter_id>/", views.usage_explain, name="usage_explain"),
    path("meters/<str:meter_id>/overview/", views.meter_overview, name="meter_overview"),
    path("meters/<str:meter_id>/live/", views.meter_live_feed, name="meter_live_feed"),
]
