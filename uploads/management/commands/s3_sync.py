"""``manage.py s3_sync [--connector NAME]``: poll S3 connectors now, as "Sync now" does.

Lists each connector's bucket, records the new files and sends their downloads to the
workers (which import them). Without ``--connector``: every connector not paused. Exits
with status 1 if a poll failed, saying why.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from uploads.connectors import connector_sync
from uploads.models import S3Connector


class Command(BaseCommand):
    help = "Poll S3 connectors now: list their buckets and import the new files."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--connector", help="The connector's name (default: all not paused)")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options.get("connector")
        if name:
            connectors = list(S3Connector.objects.filter(name=name))
            if not connectors:
                known = ", ".join(S3Connector.objects.values_list("name", flat=True)) or "none"
                raise CommandError(f"No connector named '{name}'. Connectors: {known}.")
            if connectors[0].is_paused:
                raise CommandError(f"Connector '{name}' is paused: resume it on its page first.")
        else:
            connectors = list(S3Connector.objects.filter(paused_at__isnull=True))
        failed = []
        for connector in connectors:
            outcome = connector_sync(connector=connector)
            if outcome.problem:
                failed.append(connector.name)
                self.stderr.write(f"{connector.name}: {outcome.problem}")
            else:
                self.stdout.write(
                    f"{connector.name}: {outcome.listed} files listed, {outcome.new} new."
                )
        if failed:
            raise CommandError(f"Polling failed for: {', '.join(failed)}.")
