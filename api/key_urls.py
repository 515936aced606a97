"""The admins' pages for API keys (the API itself is in ``api.urls``)."""

from __future__ import annotations

from django.urls import path

from api import key_views

app_name = "api_keys"

urlpatterns = [
    path("", key_views.key_list, name="key_list"),
    path("new/", key_views.key_create, name="key_create"),
    path("<int:pk>/revoke/", key_views.key_revoke, name="key_revoke"),
]
