"""Forms for meter definitions."""

from __future__ import annotations

from django import forms

from meters.models import Meter
from usage_portal.forms import PortalForm


class MeterCreateForm(PortalForm):
    display_name = forms.CharField(
        max_length=250, help_text="The meter's name, shown on pages and invoices."
    )
    event_name = forms.CharField(
        max_length=100,
        help_text="The event name usage is recorded with: letters, digits, _, - and . "
        "(at most 100). Unique across all meters and can't be changed later.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    aggregation_formula = forms.ChoiceField(
        label="Aggregation",
        choices=Meter.Formula.choices,
        initial=Meter.Formula.SUM,
        help_text="Sum the values, count the events, or take the last value in the period.",
    )
    customer_mapping_key = forms.CharField(
        label="Customer payload key",
        max_length=100,
        initial="stripe_customer_id",
        help_text="The payload key that holds the customer ID.",
    )
    value_settings_key = forms.CharField(
        label="Value payload key",
        max_length=100,
        initial="value",
        help_text="The payload key that holds the usage value.",
    )
    event_time_window = forms.ChoiceField(
        label="Event time window",
        choices=[("", "None (raw events)"), *Meter.TimeWindow.choices],
        required=False,
        help_text="For pre-aggregated usage: only the most recently received event in each "
        "UTC hour or day counts.",
    )


class MeterEditForm(PortalForm):
    display_name = forms.CharField(max_length=250)
