from __future__ import annotations

app_name = "uploads"

urlpatterns: list = []
