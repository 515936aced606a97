"""Models every app uses: the audit trail.

Tables keep the names they had when they lived in ``meters`` (``Meta.db_table``), so a database
made before the apps were split migrates in place.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AuditEntry(models.Model):
    """Who did what to which object, and what changed. Never edited."""

    class Action(models.TextChoices):
        CREATE = "create", "Created"
        UPDATE = "update", "Changed"
        DEACTIVATE = "deactivate", "Deactivated"
        REACTIVATE = "reactivate", "Reactivated"
        IMPORT = "import", "Imported"
        UPLOAD = "upload", "Uploaded"
        CANCEL = "cancel", "Cancelled"
        REVERT = "revert", "Reverted"

    target_type = models.CharField(max_length=40)
    target_id = models.CharField(max_length=255)
    action = models.CharField(max_length=20, choices=Action.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    at = models.DateTimeField(auto_now_add=True)
    changes = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "meters_auditentry"
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["target_type", "target_id", "-at"], name="audit_target")]

    def __str__(self) -> str:
        return f"{self.target_type}:{self.target_id} {self.action} by {self.actor} at {self.at}"
