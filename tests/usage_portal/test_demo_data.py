from __future__ import annotations

from datetime import UTC, datetime
from io import StringIO

import pytest
import time_machine
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.core.management import call_command

from customers.models import Customer
from events.models import MeterEvent, UsageRollup
from meters.models import Meter
from usage_portal.models import AuditEntry
from usage_portal.roles import Role, user_role

pytestmark = pytest.mark.django_db


def _run(*args: str) -> str:
    out = StringIO()
    call_command("demo_data", "--without-usage", *args, stdout=out)
    return out.getvalue()


# Frozen: the demo events' identifiers are made from the hours before now, so a run that
# crossed the hour between the two calls recorded a second set of events.
@time_machine.travel(datetime(2026, 6, 15, 12, 30, tzinfo=UTC), tick=False)
def test_demo_usage_is_recorded_once_through_the_core() -> None:
    out = StringIO()
    call_command("demo_data", stdout=out)
    events = MeterEvent.objects.count()
    assert events > 0
    assert f"{events} events recorded" in out.getvalue()
    call_command("demo_data", stdout=out)
    assert MeterEvent.objects.count() == events
    assert f"0 events recorded, {events} already there" in out.getvalue()
    assert UsageRollup.objects.exists()


def test_demo_data_is_idempotent_and_prints_credentials() -> None:
    first = _run()
    counts = (Meter.objects.count(), Customer.objects.count(), AuditEntry.objects.count())
    assert counts[0] == 4 and counts[1] == 20
    second = _run()
    assert (Meter.objects.count(), Customer.objects.count(), AuditEntry.objects.count()) == counts
    assert User.objects.count() == 4
    for output in (first, second):
        for pair in ("admin-demo-pass", "finance-demo-pass", "support-demo-pass", "root-demo-pass"):
            assert pair in output


@pytest.mark.parametrize(
    ("username", "password", "role"),
    [
        ("admin", "admin-demo-pass", Role.ADMIN),
        ("finance", "finance-demo-pass", Role.FINANCE),
        ("support", "support-demo-pass", Role.SUPPORT),
        ("root", "root-demo-pass", Role.ADMIN),
    ],
)
def test_demo_users_log_in_with_their_role(username: str, password: str, role: Role) -> None:
    _run()
    user = authenticate(username=username, password=password)
    assert user is not None and user_role(user) == role
    assert user.is_superuser == (username == "root")


def test_demo_passwords_are_reset_on_every_run() -> None:
    _run()
    admin = User.objects.get(username="admin")
    admin.set_password("changed")
    admin.save()
    _run()
    assert authenticate(username="admin", password="admin-demo-pass") is not None


def test_demo_meters_cover_every_formula_and_a_custom_value_key() -> None:
    _run()
    assert set(Meter.objects.values_list("aggregation_formula", flat=True)) == {
        "sum",
        "count",
        "last",
    }
    assert Meter.objects.filter(value_settings_key="tokens").exists()


def test_demo_data_names_the_port_make_run_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USAGE_PORTAL_PORT", "8123")
    assert "Log in at http://127.0.0.1:8123/login/ with:" in _run()
    monkeypatch.delenv("USAGE_PORTAL_PORT")
    assert "Log in at http://127.0.0.1:8000/login/ with:" in _run()
