from __future__ import annotations

from django import forms


class UploadForm(forms.Form):
    file = forms.FileField(
        label="CSV file",
        help_text="A .csv file (or a gzip-compressed .csv.gz) in UTF-8, or Excel's "
        "“Unicode text” (.txt).",
        widget=forms.ClearableFileInput(
            attrs={"accept": ".csv,.gz,.csv.gz,.txt,.tsv,text/csv,text/plain"}
        ),
    )
    validate_only = forms.BooleanField(
        required=False,
        label="Validate only",
        help_text=(
            "Check every row and report what would be imported, without recording any usage. "
            "You can import the same file afterwards with one click."
        ),
    )


class ErrorFilterForm(forms.Form):
    code = forms.CharField(required=False, max_length=64)
    page = forms.IntegerField(required=False, min_value=1)
