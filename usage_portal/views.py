from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from usage_portal.roles import Role, role_required


@require_GET
@role_required(Role.SUPPORT)
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    message = str(exception) if exception and str(exception) else "You do not have access."
    return render(request, "403.html", {"message": message}, status=403)
