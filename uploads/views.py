from __future__ import annotations

from dataclasses import replace

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from meters.models import Meter
from uploads import selectors, services
from uploads.forms import ErrorFilterForm, UploadForm
from uploads.limits import max_line_bytes, max_upload_bytes
from uploads.models import Upload
from uploads.reading import format_bytes
from usage_portal.pagination import page_of
from usage_portal.roles import Role, role_required
from usage_portal.types import HtmxHttpRequest

# htmx stops polling when a response has this status.
STOP_POLLING = 286


def _upload_or_404(upload_pk: int) -> Upload:
    try:
        return selectors.upload_get(pk=upload_pk)
    except Upload.DoesNotExist:
        raise Http404("No such upload.") from None


@require_GET
@role_required(Role.SUPPORT)
def upload_list(request: HtmxHttpRequest) -> HttpResponse:
    page = page_of(selectors.upload_list(), number=request.GET.get("page"), per_page=25)
    context = {
        "nav": "uploads",
        "page": page,
        "any_active": any(upload.is_active for upload in page.items),
    }
    if request.htmx:
        status = 200 if context["any_active"] else STOP_POLLING
        return render(request, "uploads/upload_list.html#rows", context, status=status)
    return render(request, "uploads/upload_list.html", context)


@require_http_methods(["GET", "POST"])
@role_required(Role.FINANCE)
def upload_create(request: HtmxHttpRequest) -> HttpResponse:
    form = UploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = services.upload_create(
            file=form.cleaned_data["file"],
            user=request.user,
            validate_only=form.cleaned_data["validate_only"],
            rows_without_identifier=form.cleaned_data["rows_without_identifier"],
        )
        return redirect(upload)
    context = {
        "nav": "uploads",
        "form": form,
        "meters": selectors.upload_meters_for_templates(),
        "max_bytes": format_bytes(max_upload_bytes()),
        "max_line": format_bytes(max_line_bytes()),
    }
    return render(request, "uploads/upload_create.html", context)


@require_GET
@role_required(Role.SUPPORT)
def upload_detail(request: HtmxHttpRequest, upload_pk: int) -> HttpResponse:
    upload = _upload_or_404(upload_pk)
    selectors.upload_pending_progress_show(upload=upload)
    filters = ErrorFilterForm(request.GET)
    filters.is_valid()
    code = filters.cleaned_data.get("code") or ""
    context = {
        "nav": "uploads",
        "upload": upload,
        "progress": selectors.upload_progress(upload=upload),
        "code": code,
    }
    if upload.is_finished and upload.rows_failed:
        context["codes"] = selectors.upload_rejection_codes(upload=upload)
        columns = selectors.error_table_columns(upload=upload)
        errors = page_of(
            selectors.upload_rejections_for_table(upload=upload, columns=columns, code=code),
            number=filters.cleaned_data.get("page"),
            per_page=50,
        )
        context["errors"] = replace(
            errors, items=selectors.upload_error_rows(rejections=errors.items, columns=columns)
        )
        context["error_columns"] = columns
    if upload.is_finished and upload.rows_duplicate:
        context["duplicates"] = selectors.upload_duplicates(
            upload=upload, number=filters.cleaned_data.get("duplicates_page"), per_page=50
        )
    if request.htmx:
        if request.htmx.target == "upload-errors":
            return render(request, "uploads/upload_detail.html#errors", context)
        if request.htmx.target == "upload-duplicates":
            return render(request, "uploads/upload_detail.html#duplicates", context)
        status = 200 if upload.needs_polling else STOP_POLLING
        return render(request, "uploads/upload_detail.html#live", context, status=status)
    return render(request, "uploads/upload_detail.html", context)


@require_GET
@role_required(Role.SUPPORT)
def upload_error_file(request: HtmxHttpRequest, upload_pk: int) -> StreamingHttpResponse:
    upload = _upload_or_404(upload_pk)
    response = StreamingHttpResponse(
        selectors.upload_error_file_lines(upload=upload), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = (
        f'attachment; filename="errors-{upload.pk}-{_safe_stem(upload)}.csv"'
    )
    return response


@require_GET
@role_required(Role.SUPPORT)
def upload_duplicate_file(request: HtmxHttpRequest, upload_pk: int) -> StreamingHttpResponse:
    upload = _upload_or_404(upload_pk)
    lines = selectors.upload_duplicate_file_lines(
        upload=upload, base_url=request.build_absolute_uri("/").rstrip("/")
    )
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="duplicates-{upload.pk}-{_safe_stem(upload)}.csv"'
    )
    return response


def _safe_stem(upload: Upload) -> str:
    stem = upload.original_name.removesuffix(".gz").removesuffix(".csv")
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:80] or "upload"


def _act(request: HtmxHttpRequest, upload: Upload, action: str) -> HttpResponse:
    try:
        if action == "cancel":
            # No flash: the live panel says "cancelling…", then "Cancelled"; a flash
            # would stay on the page after the cancellation is done.
            services.upload_cancel(upload=upload, user=request.user)
        elif action == "revert":
            services.upload_revert_request(upload=upload, user=request.user)
            messages.success(
                request, "Revert started: every event of this upload is being cancelled."
            )
        elif action == "import_rest":
            services.upload_import_rest(upload=upload, user=request.user)
            messages.success(request, "Importing the rest: the rows not imported yet.")
        else:
            imported = services.upload_import_validated(upload=upload, user=request.user)
            messages.success(request, "Import started from the validated file.")
            return redirect(imported)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    return redirect(upload)


@require_POST
@role_required(Role.FINANCE)
def upload_cancel(request: HtmxHttpRequest, upload_pk: int) -> HttpResponse:
    return _act(request, _upload_or_404(upload_pk), "cancel")


@require_POST
@role_required(Role.FINANCE)
def upload_revert(request: HtmxHttpRequest, upload_pk: int) -> HttpResponse:
    return _act(request, _upload_or_404(upload_pk), "revert")


@require_POST
@role_required(Role.FINANCE)
def upload_import_rest(request: HtmxHttpRequest, upload_pk: int) -> HttpResponse:
    return _act(request, _upload_or_404(upload_pk), "import_rest")


@require_POST
@role_required(Role.FINANCE)
def upload_import(request: HtmxHttpRequest, upload_pk: int) -> HttpResponse:
    return _act(request, _upload_or_404(upload_pk), "import")


@require_GET
@role_required(Role.FINANCE)
def upload_template(request: HtmxHttpRequest, meter_id: str) -> HttpResponse:
    meter = get_object_or_404(Meter, meter_id=meter_id)
    response = HttpResponse(
        selectors.meter_template_csv(meter=meter), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{meter.event_name}-template.csv"'
    return response
