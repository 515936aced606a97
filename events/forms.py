"""Forms for manual entry and the event explorer's filters."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils import dateparse, timezone

from customers.models import Customer
from events.ingestion import EventResult
from events.models import EventBatch
from events.selectors import EVENT_STATUS_CHOICES, EventFilters
from meters.models import Meter

TIME_HELP = "UTC. A time with an offset, like 2026-03-10T14:30+02:00, is converted to UTC."


def time_parse(text: str) -> dt.datetime | None:
    """A date or date-time typed by a person: ISO 8601 with or without an offset (none
    means UTC), a space instead of the "T", seconds optional. Empty: None."""
    text = text.strip()
    if not text:
        return None
    try:
        moment = dateparse.parse_datetime(text)
        if moment is None:
            day = dateparse.parse_date(text)
            moment = dt.datetime.combine(day, dt.time()) if day else None
    except ValueError:
        moment = None
    if moment is None:
        raise ValidationError(
            "Enter a date and time like 2026-03-10 14:30:00 (UTC) or 2026-03-10T14:30:00+02:00.",
            code="invalid_time",
        )
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


class EventEntryForm(forms.Form):
    """Manual entry of one usage event. The core does the real validation; its errors are
    attached to the field they concern with ``add_core_error``."""

    meter = forms.ModelChoiceField(
        queryset=Meter.objects.all(), to_field_name="meter_id", empty_label="Choose a meter"
    )
    customer = forms.CharField(
        label="Customer ID",
        max_length=255,
        help_text="Type an ID, name or email to search.",
        widget=forms.TextInput(
            attrs={"list": "customer-options", "autocomplete": "off", "spellcheck": "false"}
        ),
    )
    value = forms.CharField(
        required=False,
        max_length=64,
        help_text="A number; negative values correct earlier usage. Count meters need none.",
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
    )
    timestamp = forms.CharField(required=False, label="Timestamp", help_text=TIME_HELP)
    identifier = forms.CharField(
        required=False,
        help_text="Optional; generated when empty. An identifier is only ever counted once.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )

    def __init__(
        self,
        *args: Any,
        fixed_meter: Meter | None = None,
        fixed_customer: Customer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fixed_meter = fixed_meter
        self.fixed_customer = fixed_customer
        meter_field = self.fields["meter"]
        if fixed_meter is not None:
            meter_field.widget = forms.HiddenInput()
            self.initial["meter"] = fixed_meter.meter_id
        else:
            # Offer active meters; an inactive one still gets the core's archived_meter error.
            meter_field.widget.choices = [
                ("", "Choose a meter"),
                *(
                    (m.meter_id, f"{m.display_name} ({m.event_name})")
                    for m in Meter.objects.filter(status=Meter.Status.ACTIVE)
                ),
            ]
        if fixed_customer is not None:
            self.fields["customer"].widget = forms.HiddenInput()
            self.initial["customer"] = fixed_customer.external_id
        self.initial.setdefault(
            "timestamp", timezone.now().astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        )

    def clean_timestamp(self) -> dt.datetime | None:
        return time_parse(self.cleaned_data.get("timestamp", ""))

    def add_core_error(self, result: EventResult, meter: Meter) -> None:
        param = result.param
        if param == "event_name":
            name = "meter"
        elif param in ("timestamp", "identifier"):
            name = param
        elif param == f"payload[{meter.customer_mapping_key}]":
            name = "customer"
        elif param.startswith("payload["):
            name = "value"
        else:
            name = None
        if name == "meter" and self.fixed_meter is not None:
            name = None
        if name == "customer" and self.fixed_customer is not None:
            name = None
        self.add_error(name, ValidationError(result.message, code=result.code))


class EventFilterForm(forms.Form):
    """The event explorer's filters (all optional)."""

    meter = forms.ModelChoiceField(
        queryset=Meter.objects.all(),
        to_field_name="meter_id",
        required=False,
        empty_label="All meters",
    )
    customer = forms.CharField(label="Customer ID", required=False, max_length=255)
    source = forms.ChoiceField(
        choices=[("", "All sources"), *EventBatch.Source.choices], required=False
    )
    start = forms.CharField(
        label="From",
        required=False,
        help_text="UTC",
        widget=forms.TextInput(attrs={"placeholder": "YYYY-MM-DD HH:MM"}),
    )
    end = forms.CharField(
        label="Before",
        required=False,
        help_text="UTC",
        widget=forms.TextInput(attrs={"placeholder": "YYYY-MM-DD HH:MM"}),
    )
    identifier = forms.CharField(required=False, max_length=255)
    status = forms.ChoiceField(choices=EVENT_STATUS_CHOICES, required=False)
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput())

    def clean_start(self) -> dt.datetime | None:
        return time_parse(self.cleaned_data.get("start", ""))

    def clean_end(self) -> dt.datetime | None:
        return time_parse(self.cleaned_data.get("end", ""))

    def clean_customer(self) -> Customer | None:
        external_id = self.cleaned_data.get("customer", "").strip()
        if not external_id:
            return None
        customer = Customer.objects.filter(external_id=external_id).first()
        if customer is None:
            raise ValidationError(f"No customer has the ID {external_id}.", code="unknown")
        return customer

    def filters(self) -> EventFilters:
        data = self.cleaned_data
        return EventFilters(
            meter=data.get("meter"),
            customer=data.get("customer"),
            source=data.get("source", ""),
            start=data.get("start"),
            end=data.get("end"),
            identifier=data.get("identifier", "").strip(),
            status=data.get("status", ""),
        )
