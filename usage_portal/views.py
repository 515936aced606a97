from __future__ import annotations

from datetime import timedelta

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from usage_portal.roles import Role, role_required


@require_GET
@role_required(Role.SUPPORT)
def home(request: HttpRequest) -> HttpResponse:
    """The dashboard: each figure links to its page."""
    from meters.selectors import dashboard_figures
    from uploads.models import Upload

    now = timezone.now()
    context = {
        "figures": dashboard_figures(now=now),
        "uploads_running": Upload.objects.filter(status__in=Upload.ACTIVE_STATUSES).count(),
        "uploads_failed": Upload.objects.filter(
            status=Upload.Status.FAILED, created__gte=now - timedelta(days=7)
        ).count(),
    }
    return render(request, "home.html", context)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    message = str(exception) if exception and str(exception) else "You do not have access."
    return render(request, "403.html", {"message": message}, status=403)
