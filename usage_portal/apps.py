from __future__ import annotations

from django.apps import AppConfig


class UsagePortalConfig(AppConfig):
    name = "usage_portal"
    verbose_name = "Usage Portal"
