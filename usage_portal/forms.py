"""Form helpers shared by every app."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError


class PortalForm(forms.Form):
    """Labels without Django's trailing colon, as on the rest of the portal's pages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


def form_add_service_error(form: forms.BaseForm, error: ValidationError) -> None:
    """Attach a service's ValidationError to ``form``: errors keyed by a field the form has
    go under that field, the rest above the form."""
    if hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error)
