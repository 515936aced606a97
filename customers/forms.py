"""Forms for customers and their CSV import."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from customers.services import CUSTOMER_IMPORT_MAX_BYTES, customer_metadata_validate
from usage_portal.forms import PortalForm


class MetadataField(forms.Field):
    """A JSON object typed into a textarea, with the parse error said plainly."""

    widget = forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "class": "mono"})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return json.dumps(value, indent=2, ensure_ascii=False) if value else ""
        return value

    def to_python(self, value: Any) -> dict[str, Any]:
        text = str(value or "").strip()
        if not text:
            return {}
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValidationError(
                "Metadata is not valid JSON: %(error)s (line %(line)d, column %(column)d).",
                code="invalid_json",
                params={"error": error.msg, "line": error.lineno, "column": error.colno},
            ) from error
        return customer_metadata_validate(parsed)


class CustomerEditForm(PortalForm):
    name = forms.CharField(max_length=255, required=False)
    email = forms.EmailField(max_length=254, required=False)
    metadata = MetadataField(
        required=False,
        help_text='A JSON object, such as {"plan": "pro", "region": "eu"}: at most 50 keys '
        "of up to 40 characters, values up to 500 characters.",
    )


class CustomerCreateForm(CustomerEditForm):
    external_id = forms.CharField(
        label="ID",
        max_length=255,
        strip=False,
        help_text="The customer ID used in usage payloads, such as cus_123. It can't be "
        "changed later.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    field_order = ["external_id", "name", "email", "metadata"]


class CustomerImportForm(PortalForm):
    file = forms.FileField(
        label="CSV file",
        help_text="UTF-8 CSV with the header id,name,email; at most 10,000 rows and 5 MB.",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,text/csv"}),
    )

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if upload.size > CUSTOMER_IMPORT_MAX_BYTES:
            raise ValidationError(
                "The file is %(size)s MB; the limit is 5 MB.",
                code="file_too_large",
                params={"size": f"{upload.size / 1024 / 1024:.1f}"},
            )
        return upload
