"""The admins' pages for API keys: the list (with when each was last used), a new key (its
secret shown on that page once, never stored or shown again), revoke."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from api.forms import ApiKeyCreateForm
from api.models import ApiKey
from api.selectors import api_key_list
from api.services import api_key_create, api_key_revoke
from usage_portal.forms import form_add_service_error
from usage_portal.roles import Role, role_required, user_role
from usage_portal.types import HtmxHttpRequest


@require_GET
@role_required(Role.ADMIN)
def key_list(request: HtmxHttpRequest) -> HttpResponse:
    keys = [(key, user_role(key.user)) for key in api_key_list()]
    return render(request, "api/key_list.html", {"nav": "api_keys", "keys": keys})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def key_create(request: HtmxHttpRequest) -> HttpResponse:
    form = ApiKeyCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            key, secret = api_key_create(actor=request.user, **form.cleaned_data)
        except ValidationError as error:
            form_add_service_error(form, error)
        else:
            # Rendered, not redirected: the secret lives in this one reply and nowhere else.
            response = render(
                request,
                "api/key_created.html",
                {
                    "nav": "api_keys",
                    "key": key,
                    "secret": secret,
                    "base": request.build_absolute_uri("/").rstrip("/"),
                },
            )
            response["Cache-Control"] = "no-store"
            return response
    return render(request, "api/key_form.html", {"nav": "api_keys", "form": form})


@require_POST
@role_required(Role.ADMIN)
def key_revoke(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey, pk=pk)
    try:
        api_key_revoke(api_key=key, actor=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(
            request, f"Key '{key.name}' revoked: requests with it are refused from now on."
        )
    return redirect("api_keys:key_list")
