"""The admins' form for a new API key."""

from __future__ import annotations

from django import forms

from usage_portal.forms import PortalForm
from usage_portal.roles import Role


class ApiKeyCreateForm(PortalForm):
    name = forms.CharField(
        max_length=100,
        help_text="What uses the key, e.g. billing-sync. Its writes are recorded with this name.",
    )
    role = forms.ChoiceField(
        choices=[
            (Role.SUPPORT.value, "Support: reads meters and usage summaries"),
            (Role.FINANCE.value, "Finance: also records usage (meter events, adjustments)"),
            (Role.ADMIN.value, "Admin: also creates and changes meters"),
        ],
        initial=Role.FINANCE.value,
    )
