from __future__ import annotations

from datetime import UTC, timedelta

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from usage_portal.roles import Role, role_required


@require_GET
@role_required(Role.SUPPORT)
def home(request: HttpRequest) -> HttpResponse:
    """The dashboard: each figure links to its page. Like ``urls.py``, this view sits above
    every app (it gathers their figures), which the import-linter contract allows for."""
    from alerts.selectors import alerts_fired_since
    from uploads.models import Upload
    from usage.selectors import dashboard_figures, unknown_event_names

    now = timezone.now()
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    context = {
        "figures": dashboard_figures(now=now),
        "alerts_fired_this_week": alerts_fired_since(since=today - timedelta(days=today.weekday())),
        "uploads_running": Upload.objects.filter(status__in=Upload.ACTIVE_STATUSES).count(),
        "uploads_failed": Upload.objects.filter(
            status=Upload.Status.FAILED, created__gte=now - timedelta(days=7)
        ).count(),
        "unknown_event_names": unknown_event_names(since=now - timedelta(hours=24)),
    }
    return render(request, "home.html", context)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    message = str(exception) if exception and str(exception) else "You do not have access."
    return render(request, "403.html", {"message": message}, status=403)
