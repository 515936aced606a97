from __future__ import annotations

from django.urls import path

from meters import views

app_name = "meters"

urlpatterns = [
    path("meters/", views.meter_list, name="meter_list"),
    path("meters/new/", views.meter_create, name="meter_create"),
    path("meters/<str:meter_id>/", views.meter_detail, name="meter_detail"),
    path("meters/<str:meter_id>/edit/", views.meter_edit, name="meter_edit"),
    path("meters/<str:meter_id>/deactivate/", views.meter_deactivate, name="meter_deactivate"),
    path("meters/<str:meter_id>/reactivate/", views.meter_reactivate, name="meter_reactivate"),
]
