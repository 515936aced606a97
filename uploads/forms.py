from __future__ import annotations

from django import forms

from uploads.models import Upload


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
