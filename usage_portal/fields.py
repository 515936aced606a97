from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper


class ExactDecimalField(models.Field):
    """A Decimal stored exactly, with no fixed scale.

    PostgreSQL stores it as unconstrained ``numeric``. SQLite has no exact decimal type
    (its NUMERIC affinity rounds through a double), so there it is stored as text and
    aggregated in Python by the selectors.
    """

    description = "Exact decimal number"

    def db_type(self, connection: BaseDatabaseWrapper) -> str:
        return "numeric" if connection.vendor == "postgresql" else "text"

    def get_internal_type(self) -> str:
        return "ExactDecimalField"

    def to_python(self, value: Any) -> Decimal | None:
        if value is None or isinstance(value, Decimal):
            return value
        try:
            return Decimal(str(value))
        except InvalidOperation as error:
            raise ValidationError("Enter a number.", code="invalid") from error

    def from_db_value(self, value: Any, expression: Any, connection: BaseDatabaseWrapper) -> Any:
        if value is None or isinstance(value, Decimal):
            return value
        return Decimal(str(value))

    def get_db_prep_value(
        self, value: Any, connection: BaseDatabaseWrapper, prepared: bool = False
    ) -> Any:
        value = self.to_python(value)
        if value is None:
            return None
        return value if connection.vendor == "postgresql" else str(value)

    def formfield(self, **kwargs: Any) -> forms.Field | None:
        return super().formfield(**{"form_class": forms.DecimalField, **kwargs})
