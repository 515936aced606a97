from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from usage_portal import views

urlpatterns = [
    # The API first: its paths all start with v1/ or v2/, and each call then resolves in a
    # few matches rather than after every page's patterns.
    path("", include("api.urls")),
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("meters.urls")),
    path("", include("customers.urls")),
    path("", include("events.urls")),
    path("", include("usage.urls")),
    path("", include("alerts.urls")),
    path("uploads/", include("uploads.urls")),
    path("billing/", include("billing.urls")),
    path("api-keys/", include("api.key_urls")),
]

handler403 = "usage_portal.views.permission_denied"
