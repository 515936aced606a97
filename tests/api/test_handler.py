"""The WSGI entry point gunicorn serves: the API's paths go to the API's handler (no page
middleware), every other path to the pages' (login required, CSRF and the rest)."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import pytest

from usage_portal.wsgi import application

pytestmark = pytest.mark.django_db


def call(path: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "HTTP_HOST": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        **(headers or {}),
    }
    started: list[Any] = []
    body = b"".join(application(environ, lambda status, heads: started.append((status, heads))))
    status, heads = started[0]
    return status, dict(heads), body


def test_an_api_path_is_answered_in_json_by_the_api_handler() -> None:
    status, headers, body = call("/v1/billing/nothing_here", headers={"HTTP_AUTHORIZATION": "x"})
    assert status.startswith("401")
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Request-Id"].startswith("req_")
    assert "X-Frame-Options" not in headers  # no page middleware ran
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_a_page_path_still_goes_through_the_pages_middleware() -> None:
    status, headers, _ = call("/customers/")
    assert status.startswith("302") and "/login/" in headers["Location"]
    assert headers["X-Frame-Options"] == "DENY"


def test_an_api_call_for_a_host_not_served_is_refused() -> None:
    status, _, body = call("/v1/billing/meters", headers={"HTTP_HOST": "evil.example"})
    assert status.startswith("400")
    assert json.loads(body)["error"]["code"] == "invalid_host"
