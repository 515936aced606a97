"""The audit trail: who did what to which object, and what changed.

Every write records an ``AuditEntry`` through ``audit_record`` with
``changes = {field: [old, new]}``; every object page reads it with ``audit_entries_for``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, User
from django.db import models
from django.db.models import QuerySet

from usage_portal.models import AuditEntry


def audit_target(obj: models.Model) -> tuple[str, str]:
    """How an object is named in the trail: ("meters.meter", "<pk>")."""
    return obj._meta.label_lower, str(obj.pk)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict | list | str | int | float | bool) or value is None:
        return value
    return str(value)


def audit_record(
    *,
    target: models.Model,
    action: str,
    actor: AbstractBaseUser | None,
    changes: Mapping[str, Iterable[Any]] | None = None,
) -> AuditEntry:
    """Record that ``actor`` did ``action`` (an ``AuditEntry.Action``) to ``target``.

    ``changes`` maps a field to ``(old, new)``; values are stored JSON-safe (times as ISO
    8601, decimals as strings). Other apps record uploads, cancellations and reverts here.
    """
    target_type, target_id = audit_target(target)
    return AuditEntry.objects.create(
        target_type=target_type,
        target_id=target_id,
        action=action,
        actor=actor if isinstance(actor, User) else None,
        changes={
            name: [_jsonable(value) for value in pair] for name, pair in (changes or {}).items()
        },
    )


def audit_diff(obj: models.Model, new_values: Mapping[str, Any]) -> dict[str, list[Any]]:
    return {
        name: [getattr(obj, name), value]
        for name, value in new_values.items()
        if getattr(obj, name) != value
    }


def audit_entries_for(*, target: models.Model, limit: int = 200) -> QuerySet[AuditEntry]:
    """The audit trail of one object, newest first, with the actors loaded."""
    return AuditEntry.objects.filter(
        target_type=target._meta.label_lower, target_id=str(target.pk)
    ).select_related("actor")[:limit]
