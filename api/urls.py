from __future__ import annotations

from django.urls import path, re_path

from api import views

app_name = "api"

urlpatterns = [  # the busiest first: each call stops at its first match
    path("v1/billing/meter_events", views.meter_events, name="meter_events"),
    path(
        "v2/billing/meter_event_stream", views.v2_meter_event_stream, name="v2_meter_event_stream"
    ),
    path("v2/billing/meter_events", views.v2_meter_events, name="v2_meter_events"),
    path("v1/billing/meters", views.meters, name="meters"),
    path("v1/billing/meters/<str:meter_id>", views.meter, name="meter"),
    path(
        "v1/billing/meters/<str:meter_id>/deactivate",
        views.meter_deactivate_view,
        name="meter_deactivate",
    ),
    path(
        "v1/billing/meters/<str:meter_id>/reactivate",
        views.meter_reactivate_view,
        name="meter_reactivate",
    ),
    path(
        "v1/billing/meters/<str:meter_id>/event_summaries",
        views.meter_event_summaries_view,
        name="meter_event_summaries",
    ),
    path(
        "v1/billing/meters/<str:meter_id>/event_error_reports",
        views.meter_event_error_reports,
        name="meter_event_error_reports",
    ),
    path(
        "v1/billing/meter_event_adjustments",
        views.meter_event_adjustments,
        name="meter_event_adjustments",
    ),
    path(
        "v2/billing/meter_event_adjustments",
        views.v2_meter_event_adjustments,
        name="v2_meter_event_adjustments",
    ),
    path(
        "v2/billing/meter_event_session",
        views.v2_meter_event_session,
        name="v2_meter_event_session",
    ),
    re_path(r"^(?P<rest>v[12](?:/.*)?)$", views.not_found, name="not_found"),
]
