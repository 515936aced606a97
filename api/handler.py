"""The API's WSGI handler: Django's own, with none of the pages' middleware.

Sessions, CSRF, the login redirect, messages, htmx and static files are for the pages; an
API call is authenticated by its key and answered in JSON by ``api_endpoint`` (which sets
the security headers that matter to JSON). Without that stack a call costs about a quarter
less CPU. ``usage_portal.wsgi`` hands it every path under ``/v1/`` and ``/v2/``; the URL
patterns, the views, the signals (database connections opened and closed per request) and
the handling of uncaught errors are Django's, unchanged.
"""

from __future__ import annotations

from typing import Any

from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler

API_PREFIXES = ("/v1/", "/v2/")


class ApiHandler(WSGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        self._middleware_chain = convert_exception_to_response(
            self._get_response  # type: ignore[attr-defined]
        )


def api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in ("/v1", "/v2")
