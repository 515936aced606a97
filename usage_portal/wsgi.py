"""The WSGI entry point (gunicorn): the API's paths to the API's lean handler, the rest to
Django's with the pages' middleware."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "usage_portal.settings")

pages = get_wsgi_application()

from api.handler import ApiHandler, api_path  # noqa: E402 - needs the settings (above)

api = ApiHandler()


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if api_path(environ.get("PATH_INFO", "")):
        return api(environ, start_response)
    return pages(environ, start_response)
