"""Forms for meters and customers (first section) and for usage and events (at the end).

Forms parse and check input; the services in ``meters/services.py`` make the final checks and
raise ``ValidationError``s that views attach to the form with ``form.add_error(None, error)``.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from meters.models import Meter
from meters.services import CUSTOMER_IMPORT_MAX_BYTES, customer_metadata_validate

# === Meters and customers ====================================================================


class PortalForm(forms.Form):
    """Labels without Django's trailing colon, as on the rest of the portal's pages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


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


# === end of meters and customers =============================================================


# === Usage and events (events engineer) =======================================================
import datetime as dt  # noqa: E402

from django.utils import dateparse, timezone  # noqa: E402

from meters.ingestion import EventResult  # noqa: E402
from meters.models import Customer, EventBatch  # noqa: E402
from meters.selectors import EVENT_STATUS_CHOICES, EventFilters  # noqa: E402

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
