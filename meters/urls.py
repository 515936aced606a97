from __future__ import annotations

from django.urls import path

from meters import views

app_name = "meters"

urlpatterns: list = []
