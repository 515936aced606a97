"""API keys: made with a role, the secret shown once and stored only as a digest, revoked
for good; the command for scripts."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from api.models import ApiKey
from api.services import api_key_create, api_key_revoke, secret_digest
from usage_portal.models import AuditEntry
from usage_portal.roles import Role, has_role, user_role

pytestmark = pytest.mark.django_db


def test_a_key_holds_its_role_and_only_a_digest_of_its_secret(admin_role_user) -> None:
    key, secret = api_key_create(name="billing sync", role="finance", actor=admin_role_user)
    assert secret.startswith("sk_up_") and len(secret) > 40
    assert key.secret_digest == secret_digest(secret) and secret not in key.secret_digest
    assert key.prefix == secret[:12]
    assert user_role(key.user) == Role.FINANCE and not has_role(key.user, Role.ADMIN)
    assert not key.user.has_usable_password()  # never logs in to the pages
    assert key.user.username == "api:billing sync"
    entry = AuditEntry.objects.get(target_type="api.apikey")
    assert (entry.actor, entry.changes["role"]) == (admin_role_user, [None, "finance"])


@pytest.mark.parametrize(
    ("name", "role", "field"),
    [("", "finance", "name"), ("a/b", "finance", "name"), ("x" * 101, "finance", "name"),
     ("ok", "owner", "role"), ("taken", "finance", "name")],
)  # fmt: skip
def test_a_bad_key_is_refused_with_what_to_fix(name: str, role: str, field: str) -> None:
    api_key_create(name="taken", role="support", actor=None)
    with pytest.raises(ValidationError) as raised:
        api_key_create(name=name, role=role, actor=None)
    assert field in raised.value.message_dict
    assert ApiKey.objects.count() == 1


def test_a_revoked_key_stays_revoked() -> None:
    key, _ = api_key_create(name="old", role="support", actor=None)
    revoked = api_key_revoke(api_key=key, actor=None)
    assert (
        revoked.revoked_at is not None
        and not revoked.user.__class__.objects.get(pk=revoked.user_id).is_active
    )
    with pytest.raises(ValidationError):
        api_key_revoke(api_key=key, actor=None)


def test_the_command_prints_the_secret_alone_on_its_last_line() -> None:
    out, err = StringIO(), StringIO()
    call_command("api_key_create", "--name", "ci", "--role", "finance", stdout=out, stderr=err)
    secret = out.getvalue().strip().splitlines()[-1]
    assert secret.startswith("sk_up_") and " " not in secret
    assert ApiKey.objects.get(name="ci").secret_digest == secret_digest(secret)
    assert "Created API key 'ci'" in err.getvalue()
    with pytest.raises(CommandError, match="exists already"):
        call_command("api_key_create", "--name", "ci", "--role", "finance", stdout=out, stderr=err)


def test_an_admin_makes_a_key_on_its_page_and_sees_the_secret_once(admin_client_role) -> None:
    reply = admin_client_role.post("/api-keys/new/", {"name": "billing-sync", "role": "finance"})
    assert reply.status_code == 200 and reply["Cache-Control"] == "no-store"
    secret = reply.context["secret"]
    assert secret.encode() in reply.content
    key = ApiKey.objects.get(name="billing-sync")
    assert key.secret_digest == secret_digest(secret)
    listing = admin_client_role.get("/api-keys/")
    assert b"billing-sync" in listing.content and key.prefix.encode() in listing.content
    assert secret.encode() not in listing.content  # never shown again
    assert b"never" in listing.content  # not used yet
    again = admin_client_role.post("/api-keys/new/", {"name": "billing-sync", "role": "finance"})
    assert b"exists already" in again.content
    revoked = admin_client_role.post(f"/api-keys/{key.pk}/revoke/", follow=True)
    assert b"revoked" in revoked.content
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
