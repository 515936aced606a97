"""``manage.py demo_data``: one user per role, a superuser, a few meters and customers, and
the last 30 days of their usage, recorded through the ingestion core.

Idempotent: run it as often as you like. Users are matched by username (their demo password
and role are set again on every run), meters by event name and customers by ID; nothing is
duplicated and existing meters and customers are left as they are. Demo events have
identifiers derived from their meter, customer and hour, so a second run finds them all
duplicates and counts nothing twice.
"""

from __future__ import annotations

import os
import random
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from customers.models import Customer
from customers.services import customer_create
from events.ingestion import EventInput, event_batch_create, meter_events_ingest
from events.models import EventBatch
from meters.models import Meter
from meters.services import meter_create

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

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--without-usage", action="store_true", help="Skip the 30 days of demo usage."
        )

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        users = {
            username: self._user(username, password, role, full_name)
            for username, password, role, full_name in DEMO_USERS
        }

        meters_created = 0
        for spec in DEMO_METERS:
            if not Meter.objects.filter(event_name=spec["event_name"]).exists():
                meter_create(actor=None, **spec)
                meters_created += 1

        existing = set(Customer.objects.values_list("external_id", flat=True))
        customers_created = 0
        for number, company in enumerate(DEMO_COMPANIES, start=1):
            external_id = f"cus_demo_{number:03d}"
            if external_id in existing:
                continue
            customer_create(
                actor=None,
                external_id=external_id,
                name=company,
                email=f"billing@{_slug(company)}.example",
                metadata={"plan": ("pro", "team", "enterprise")[number % 3]},
            )
            customers_created += 1

        if not options["without_usage"]:
            usage = self._usage(users["finance"])
            self.stdout.write(
                f"Demo usage: {usage.accepted} events recorded, {usage.duplicates} already there."
            )
        self.stdout.write(
            f"Demo data ready: {meters_created} meters and {customers_created} customers "
            f"created ({Meter.objects.count()} meters, {Customer.objects.count()} customers "
            "in total)."
        )
        port = os.environ.get("USAGE_PORTAL_PORT", "8000")  # make run serves there (Procfile)
        self.stdout.write(f"Log in at http://127.0.0.1:{port}/login/ with:")
        for username, password, role, _ in DEMO_USERS:
            self.stdout.write(f"  {username:<8} {password:<18} {role or 'superuser (/admin/)'}")

    def _usage(self, user: User) -> Any:
        """An event every eight hours over the last 30 days, for every demo meter and the
        first eight demo customers, with skewed volumes so the pages have something to show."""
        meters = list(Meter.objects.filter(event_name__in=[m["event_name"] for m in DEMO_METERS]))
        customers = list(
            Customer.objects.filter(external_id__startswith="cus_demo_").order_by("external_id")
        )[:8]
        now = timezone.now().replace(minute=0, second=0, microsecond=0)
        events = []
        for meter in meters:
            for rank, customer in enumerate(customers, start=1):
                rng = random.Random(f"{meter.event_name}/{customer.external_id}")
                for step in reversed(range(30 * 3)):  # oldest first, as received
                    hour = now - timedelta(hours=8 * step + 1)
                    value = Decimal(rng.randint(1, 400 // rank + 5))
                    payload = {meter.customer_mapping_key: customer.external_id}
                    if meter.aggregation_formula != Meter.Formula.COUNT:
                        payload[meter.value_settings_key] = str(value)
                    events.append(
                        EventInput(
                            event_name=meter.event_name,
                            payload=payload,
                            identifier=(
                                f"demo_{meter.event_name}_{customer.external_id}_{hour:%Y%m%d%H}"
                            ),
                            timestamp=hour + timedelta(minutes=rng.randint(0, 59)),
                        )
                    )
        batch = event_batch_create(source=EventBatch.Source.MANUAL, user=user)
        return meter_events_ingest(events=events, batch=batch)

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
