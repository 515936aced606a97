from __future__ import annotations

from django.apps import AppConfig


class UsagePortalConfig(AppConfig):
    name = "usage_portal"
    verbose_name = "Usage Portal"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from usage_portal.sqlite_lock import announce_writes

        # SQLite: every connection's writes say that they wait for the lock (an import's
        # long transaction then steps aside).
        connection_created.connect(announce_writes, dispatch_uid="usage_portal.announce_writes")
