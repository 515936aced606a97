from __future__ import annotations

from django.urls import path

from uploads import connector_views, views

app_name = "uploads"

urlpatterns = [
    path("", views.upload_list, name="upload_list"),
    path("new/", views.upload_create, name="upload_create"),
    path("templates/<str:meter_id>.csv", views.upload_template, name="upload_template"),
    path("<int:upload_pk>/", views.upload_detail, name="upload_detail"),
    path("<int:upload_pk>/errors.csv", views.upload_error_file, name="upload_error_file"),
    path(
        "<int:upload_pk>/duplicates.csv", views.upload_duplicate_file, name="upload_duplicate_file"
    ),
    path("<int:upload_pk>/cancel/", views.upload_cancel, name="upload_cancel"),
    path("<int:upload_pk>/revert/", views.upload_revert, name="upload_revert"),
    path("<int:upload_pk>/import/", views.upload_import, name="upload_import"),
    path("<int:upload_pk>/import-rest/", views.upload_import_rest, name="upload_import_rest"),
]

urlpatterns += [
    path("s3/", connector_views.connector_list, name="connector_list"),
    path("s3/new/", connector_views.connector_new, name="connector_new"),
    path("s3/<int:connector_pk>/", connector_views.connector_detail, name="connector_detail"),
    path("s3/<int:connector_pk>/edit/", connector_views.connector_edit, name="connector_edit"),
    path("s3/<int:connector_pk>/test/", connector_views.connector_test_view, name="connector_test"),
    path("s3/<int:connector_pk>/sync/", connector_views.connector_sync_view, name="connector_sync"),
    path(
        "s3/<int:connector_pk>/pause/",
        connector_views.connector_pause_view,
        name="connector_pause",
    ),
]
