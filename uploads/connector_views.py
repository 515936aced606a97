"""The S3 connectors' pages: the list, a connector's files (each with its status, counts and
upload), and the admins' forms and actions: new, edit, test connection, sync now, pause and
resume. Staff who see uploads see the connectors' files; only admins change connectors."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from uploads import selectors
from uploads.connectors import (
    ConnectorFields,
    connector_create,
    connector_pause,
    connector_sync,
    connector_test,
    connector_update,
)
from uploads.forms import ConnectorForm
from uploads.models import S3Connector
from uploads.views import STOP_POLLING
from usage_portal.forms import form_add_service_error
from usage_portal.pagination import page_of
from usage_portal.roles import Role, role_required
from usage_portal.types import HtmxHttpRequest


def _fields(form: ConnectorForm) -> ConnectorFields:
    data = form.cleaned_data
    return ConnectorFields(
        name=data["name"],
        bucket=data["bucket"],
        prefix=data["key_prefix"],
        region=data["region"],
        endpoint_url=data["endpoint_url"],
        access_key_id=data["access_key_id"],
        validate_only=data["validate_only"],
        rows_without_identifier=data["rows_without_identifier"],
    )


@require_GET
@role_required(Role.SUPPORT)
def connector_list(request: HtmxHttpRequest) -> HttpResponse:
    return render(
        request,
        "uploads/connector_list.html",
        {"nav": "uploads", "connectors": selectors.connector_list()},
    )


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def connector_new(request: HtmxHttpRequest) -> HttpResponse:
    form = ConnectorForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            connector = connector_create(
                fields=_fields(form),
                secret_access_key=form.cleaned_data["secret_access_key"],
                actor=request.user,
            )
        except ValidationError as error:
            form_add_service_error(form, error)
        else:
            messages.success(
                request,
                f"Connector “{connector.name}” added. Test the connection, then sync now or wait "
                f"for the next poll.",
            )
            return redirect(connector)
    return render(
        request, "uploads/connector_form.html", {"nav": "uploads", "form": form, "connector": None}
    )


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def connector_edit(request: HtmxHttpRequest, connector_pk: int) -> HttpResponse:
    connector = get_object_or_404(S3Connector, pk=connector_pk)
    initial = {
        name: getattr(connector, name)
        for name in (
            "name",
            "bucket",
            "region",
            "endpoint_url",
            "access_key_id",
            "validate_only",
            "rows_without_identifier",
        )
    }
    initial["key_prefix"] = connector.prefix
    form = ConnectorForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            connector = connector_update(
                connector=connector,
                fields=_fields(form),
                secret_access_key=form.cleaned_data["secret_access_key"],
                actor=request.user,
            )
        except ValidationError as error:
            form_add_service_error(form, error)
        else:
            messages.success(request, f"Connector “{connector.name}” saved.")
            return redirect(connector)
    return render(
        request,
        "uploads/connector_form.html",
        {"nav": "uploads", "form": form, "connector": connector},
    )


@require_GET
@role_required(Role.SUPPORT)
def connector_detail(request: HtmxHttpRequest, connector_pk: int) -> HttpResponse:
    connector = get_object_or_404(S3Connector, pk=connector_pk)
    page = page_of(
        selectors.connector_objects(connector=connector),
        number=request.GET.get("page"),
        per_page=50,
    )
    active = selectors.connector_any_active(connector=connector)
    context = {
        "nav": "uploads",
        "connector": connector,
        "page": page,
        "any_active": active,
        "poll_minutes": round(settings.USAGE_S3_POLL_SECONDS / 60, 1),
    }
    if request.htmx and request.GET.get("poll"):
        status = 200 if active else STOP_POLLING
        return render(request, "uploads/connector_detail.html#files", context, status=status)
    return render(request, "uploads/connector_detail.html", context)


@require_POST
@role_required(Role.ADMIN)
def connector_test_view(request: HtmxHttpRequest, connector_pk: int) -> HttpResponse:
    connector = get_object_or_404(S3Connector, pk=connector_pk)
    result = connector_test(connector=connector)
    context = {"connector": connector, "result": result}
    if request.htmx:
        return render(request, "uploads/connector_detail.html#test_result", context)
    if result.problem:
        messages.error(request, f"Connection test failed: {result.problem}")
    else:
        found = ", ".join(result.keys) if result.keys else "no objects under the prefix yet"
        messages.success(request, f"Connection works. Found: {found}.")
    return redirect(connector)


@require_POST
@role_required(Role.ADMIN)
def connector_sync_view(request: HtmxHttpRequest, connector_pk: int) -> HttpResponse:
    connector = get_object_or_404(S3Connector, pk=connector_pk)
    if connector.is_paused:
        messages.error(request, "This connector is paused: resume it to sync.")
        return redirect(connector)
    outcome = connector_sync(connector=connector)
    if outcome.problem:
        messages.error(request, f"Sync failed: {outcome.problem}")
    else:
        new = (
            f"{outcome.new:,} new, downloaded and imported in the background"
            if outcome.new
            else "none new"
        )
        messages.success(request, f"Synced: {outcome.listed:,} files listed, {new}.")
    return redirect(connector)


@require_POST
@role_required(Role.ADMIN)
def connector_pause_view(request: HtmxHttpRequest, connector_pk: int) -> HttpResponse:
    connector = get_object_or_404(S3Connector, pk=connector_pk)
    paused = request.POST.get("paused") != "0"
    connector_pause(connector=connector, paused=paused, actor=request.user)
    if paused:
        messages.success(request, "Paused: the bucket is not polled and no file is downloaded.")
    else:
        messages.success(
            request, "Resumed: the bucket is polled now, and files that arrived are imported."
        )
    return redirect(connector)
