from __future__ import annotations

from django import forms

from uploads.models import Upload
from usage_portal.forms import PortalForm


class UploadForm(forms.Form):
    file = forms.FileField(
        label="CSV file",
        help_text="A .csv file (or a gzip-compressed .csv.gz) in UTF-8, or Excel's "
        "“Unicode text” (.txt).",
        widget=forms.ClearableFileInput(
            attrs={"accept": ".csv,.gz,.csv.gz,.txt,.tsv,text/csv,text/plain"}
        ),
    )
    rows_without_identifier = forms.ChoiceField(
        label="Rows without an identifier are",
        choices=Upload.RowsWithoutIdentifier.choices,
        initial=Upload.RowsWithoutIdentifier.NEW_USAGE,
        widget=forms.RadioSelect,
        required=False,  # left out (a script posting the form): new usage, the default
        help_text="A row with an identifier is counted once per identifier either way.",
    )
    validate_only = forms.BooleanField(
        required=False,
        label="Validate only",
        help_text=(
            "Check every row and report what would be imported, without recording any usage. "
            "You can import the same file afterwards with one click."
        ),
    )

    def clean_rows_without_identifier(self) -> str:
        return self.cleaned_data["rows_without_identifier"] or str(
            Upload.RowsWithoutIdentifier.NEW_USAGE
        )


class ErrorFilterForm(forms.Form):
    code = forms.CharField(required=False, max_length=64)
    page = forms.IntegerField(required=False, min_value=1)
    duplicates_page = forms.IntegerField(required=False, min_value=1)


class ConnectorForm(PortalForm):
    """An S3 connector's fields; the service checks them (``uploads.connectors``)."""

    name = forms.CharField(max_length=100, help_text="Shown on its files' uploads, e.g. 'exports'.")
    bucket = forms.CharField(max_length=63)
    key_prefix = forms.CharField(  # "prefix" is a form's own attribute
        label="Prefix",
        max_length=512,
        required=False,
        help_text="Only keys starting with this are imported (e.g. 'usage/'); empty: the whole "
        "bucket. Error files are written under <prefix>errors/.",
    )
    region = forms.CharField(max_length=32, initial="us-east-1")
    endpoint_url = forms.CharField(
        label="Endpoint URL",
        max_length=500,
        required=False,
        help_text="Only for an S3-compatible store (MinIO, Ceph), e.g. https://minio.example.com. "
        "Empty: Amazon S3.",
    )
    access_key_id = forms.CharField(
        label="Access key ID",
        max_length=128,
        required=False,
        help_text="Empty: the workers' default AWS credentials (an instance role).",
    )
    secret_access_key = forms.CharField(
        label="Secret access key",
        max_length=256,
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted and never shown again.",
    )
    rows_without_identifier = forms.ChoiceField(
        label="Rows without an identifier are",
        choices=Upload.RowsWithoutIdentifier.choices,
        initial=Upload.RowsWithoutIdentifier.NEW_USAGE,
        widget=forms.RadioSelect,
        required=False,  # left out: new usage, the default
        help_text="New usage: each such row counts, also in a new version of a file. A "
        "corrected copy: rows identical to rows imported before are not counted again. Rows "
        "with an identifier count once either way.",
    )
    validate_only = forms.BooleanField(
        required=False,
        label="Validate only",
        help_text="Check each file and report what it would import, without recording usage; "
        "import a checked file from its upload's page.",
    )

    clean_rows_without_identifier = UploadForm.clean_rows_without_identifier  # the default
