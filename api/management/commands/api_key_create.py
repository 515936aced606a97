"""``manage.py api_key_create --name NAME --role ROLE``: a new API key, for scripts and CI.
The secret is printed alone on the last line (and never again)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from api.services import api_key_create
from usage_portal.roles import Role


class Command(BaseCommand):
    help = "Create an API key and print its secret (shown this once) on its own line."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--name", required=True, help="A name for the key, e.g. billing-sync")
        parser.add_argument("--role", required=True, choices=[role.value for role in Role])

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key, secret = api_key_create(name=options["name"], role=options["role"], actor=None)
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from error
        self.stderr.write(f"Created API key '{key.name}' ({options['role']}). Its secret:")
        self.stdout.write(secret)
