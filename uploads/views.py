from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from usage_portal.roles import Role, role_required


@require_GET
@role_required(Role.SUPPORT)
def upload_list(request: HttpRequest) -> HttpResponse:  # placeholder, replaced by the uploads work
    return render(request, "home.html", {"nav": "uploads"})
