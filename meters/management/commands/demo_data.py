"""``manage.py demo_data``: one user per role, a superuser, a few meters and customers.

Idempotent: run it as often as you like. Users are matched by username (their demo password
and role are set again on every run), meters by event name and customers by ID; nothing is
duplicated and existing meters and customers are left as they are.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand
from django.db import transaction

from meters import services
from meters.models import Customer, Meter

DEMO_USERS = [
    # username, password, role group (None: superuser), full name
    ("admin", "admin-demo-pass", "admin", "Ada Admin"),
    ("finance", "finance-demo-pass", "finance", "Fin Finance"),
    ("support", "support-demo-pass", "support", "Sam Support"),
    ("root", "root-demo-pass", None, "Root Superuser"),
]

DEMO_METERS: list[dict[str, Any]] = [
    {"display_name": "API requests", "event_name": "api_requests", "aggregation_formula": "count"},
    {"display_name": "Storage (GB-hours)", "event_name": "storage_gb_hours"},
    {
        "display_name": "LLM tokens",
        "event_name": "llm.tokens",
        "value_settings_key": "tokens",
    },
    {
        "display_name": "Active seats",
        "event_name": "active_seats",
        "aggregation_formula": "last",
        "event_time_window": "day",
    },
]

DEMO_COMPANIES = [
    "Acme Corp", "Globex", "Initech", "Umbrella Labs", "Hooli", "Stark Industries",
    "Wayne Enterprises", "Wonka Foods", "Soylent", "Tyrell Systems", "Cyberdyne",
    "Aperture Science", "Black Mesa", "Vandelay Industries", "Pied Piper", "Dunder Mifflin",
    "Prestige Worldwide", "Oscorp", "Massive Dynamic", "Gringotts Bank",
]  # fmt: skip


def _slug(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


class Command(BaseCommand):
    help = "Create demo users (one per role and a superuser), meters and customers. Idempotent."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        for username, password, role, full_name in DEMO_USERS:
            self._user(username, password, role, full_name)

        meters_created = 0
        for spec in DEMO_METERS:
            if not Meter.objects.filter(event_name=spec["event_name"]).exists():
                services.meter_create(actor=None, **spec)
                meters_created += 1

        existing = set(Customer.objects.values_list("external_id", flat=True))
        customers_created = 0
        for number, company in enumerate(DEMO_COMPANIES, start=1):
            external_id = f"cus_demo_{number:03d}"
            if external_id in existing:
                continue
            services.customer_create(
                actor=None,
                external_id=external_id,
                name=company,
                email=f"billing@{_slug(company)}.example",
                metadata={"plan": ("pro", "team", "enterprise")[number % 3]},
            )
            customers_created += 1

        self.stdout.write(
            f"Demo data ready: {meters_created} meters and {customers_created} customers "
            f"created ({Meter.objects.count()} meters, {Customer.objects.count()} customers "
            "in total)."
        )
        self.stdout.write("Log in at http://127.0.0.1:8000/login/ with:")
        for username, password, role, _ in DEMO_USERS:
            self.stdout.write(f"  {username:<8} {password:<18} {role or 'superuser (/admin/)'}")

    def _user(self, username: str, password: str, role: str | None, full_name: str) -> User:
        first, _, last = full_name.partition(" ")
        user, _ = User.objects.get_or_create(
            username=username,
            defaults={"first_name": first, "last_name": last, "email": f"{username}@example.com"},
        )
        user.set_password(password)
        user.is_active = True
        if role is None:
            user.is_staff = user.is_superuser = True
        else:
            group, _ = Group.objects.get_or_create(name=role)
            user.groups.set([group])
        user.save()
        return user
