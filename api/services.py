"""Writes of the API app: keys (create, revoke), their use, and the replies kept for
``Idempotency-Key``."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.utils import timezone

from api.credentials import credentials_forget
from api.models import ApiKey, IdempotentReply, MeterEventSession
from usage_portal.audit import audit_record
from usage_portal.models import AuditEntry
from usage_portal.roles import Role

SECRET_START = "sk_up_"  # noqa: S105 - a prefix, like Stripe's sk_live_: names what leaked
_NAME = re.compile(r"^[\w.@+-]+( [\w.@+-]+)*$")  # a username's characters, single spaces
LAST_USED_STEP = timedelta(minutes=1)  # how stale "last used" may be: one write a minute


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def api_key_create(*, name: str, role: str, actor: User | None) -> tuple[ApiKey, str]:
    """A new key and its secret, which is shown this once and stored only as a digest. The
    key acts as a user of its own, ``api:<name>``, holding ``role``."""
    name = name.strip()
    errors: dict[str, str] = {}
    if not name or len(name) > 100 or not _NAME.match(name):
        errors["name"] = (
            "Give the key a name of up to 100 letters, digits, spaces or . @ + - _ "
            "(for example 'billing-sync')."
        )
    elif ApiKey.objects.filter(name=name).exists():
        errors["name"] = f"A key named '{name}' exists already: choose another name."
    if role not in {r.value for r in Role}:
        errors["role"] = "Choose the key's role: support, finance or admin."
    if errors:
        raise ValidationError(errors)
    secret = SECRET_START + secrets.token_urlsafe(32)
    user = User(username=f"api:{name}"[:150], first_name=name[:150], last_name="(API key)")
    user.set_unusable_password()  # the key's user never logs in to the pages
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError as error:
        raise ValidationError({"name": f"The name '{name}' is taken: choose another."}) from error
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    key = ApiKey.objects.create(
        name=name,
        user=user,
        prefix=secret[: len(SECRET_START) + 6],
        secret_digest=secret_digest(secret),
        created_by=actor,
    )
    audit_record(
        target=key,
        action=AuditEntry.Action.CREATE,
        actor=actor,
        changes={"name": [None, name], "role": [None, role], "prefix": [None, key.prefix]},
    )
    return key, secret


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: User | None) -> ApiKey:
    """Stop the key working, at once and for good. What it recorded stays."""
    locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if locked.revoked_at is not None:
        raise ValidationError("This key is revoked already.", code="api_key_revoked")
    locked.revoked_at = timezone.now()
    locked.save(update_fields=["revoked_at"])
    User.objects.filter(pk=locked.user_id).update(is_active=False)
    credentials_forget()
    audit_record(
        target=locked,
        action=AuditEntry.Action.DEACTIVATE,
        actor=actor,
        changes={"revoked_at": [None, locked.revoked_at]},
    )
    return locked


def api_key_used(*, api_key: ApiKey, now: datetime) -> None:
    """Note that the key was used: at most one write a minute, outside any transaction of
    the request's own."""
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_STEP:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now


IDEMPOTENCY_KEEP = timedelta(hours=48)  # Stripe keeps keys 24 hours; twice that here
_PRUNE_CHUNK = 20_000


def idempotent_replies_prune(*, now: datetime, keep: timedelta = IDEMPOTENCY_KEEP) -> int:
    """Delete the replies older than ``keep`` and the sessions expired as long ago; how
    many replies."""
    MeterEventSession.objects.filter(expires_at__lt=now - keep).delete()
    return rows_prune(IdempotentReply, "created", now - keep)


def rows_prune(
    model: type[models.Model], written: str, cutoff: datetime, condition: Q | None = None
) -> int:
    """Delete the rows of ``model`` (those meeting ``condition``) among those ``written``
    before ``cutoff``, walking the ids upwards, ``_PRUNE_CHUNK`` at a time (short
    transactions, no index but the primary key's): rows are written in id order, so the walk
    stops at the first chunk written after ``cutoff``. How many were deleted."""
    deleted, after = 0, 0
    while True:
        chunk = list(
            model._default_manager.filter(pk__gt=after)
            .order_by("pk")
            .values_list("pk", written)[:_PRUNE_CHUNK]
        )
        old = [pk for pk, at in chunk if at < cutoff]
        if old:
            doomed = model._default_manager.filter(pk__in=old)
            if condition is not None:
                doomed = doomed.filter(condition)
            deleted += doomed.delete()[0]
        if len(old) < len(chunk) or not chunk:
            return deleted
        after = chunk[-1][0]


SESSION_LIFETIME = timedelta(minutes=15)  # Stripe's meter event sessions last 15 minutes


def meter_event_session_create(*, api_key: ApiKey, now: datetime) -> tuple[MeterEventSession, str]:
    """A session for the v2 stream and its token (shown in this reply only)."""
    token = "mes_tok_" + secrets.token_urlsafe(32)
    session = MeterEventSession.objects.create(
        public_id="mes_" + secrets.token_hex(12),
        api_key=api_key,
        token_digest=secret_digest(token),
        created=now,
        expires_at=now + SESSION_LIFETIME,
    )
    return session, token
