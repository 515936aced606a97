"""The API's permission matrix: every endpoint and method, for no key and a key of each role.

* no key, or an unknown one        -> 401 with Stripe's error object;
* a key below the endpoint's role  -> 403;
* a key at or above it             -> neither (the call itself may still be refused).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from api.services import api_key_create, meter_event_session_create
from tests.factories import MeterFactory
from usage_portal.roles import Role

pytestmark = pytest.mark.django_db


def api_routes() -> list[tuple[str, str, Role, tuple[str, ...], str]]:
    (resolver,) = [
        entry
        for entry in get_resolver().url_patterns
        if isinstance(entry, URLResolver) and entry.namespace == "api"
    ]
    routes = []
    for pattern in resolver.url_patterns:
        assert isinstance(pattern, URLPattern)
        roles = getattr(pattern.callback, "api_roles", None)
        assert roles, f"api:{pattern.name} is not an @api_endpoint: it must check its key"
        for method, role in roles.items():
            kwargs = tuple(pattern.pattern.regex.groupindex)
            auth = getattr(pattern.callback, "api_auth", "key")
            routes.append((f"api:{pattern.name}", method, role, kwargs, auth))
    return routes


ROUTES = api_routes()


def _url(name: str, kwargs: tuple[str, ...]) -> str:
    values: dict[str, Any] = {}
    for kwarg in kwargs:
        values[kwarg] = MeterFactory.create().meter_id if kwarg == "meter_id" else "v1/unknown"
    return reverse(name, kwargs=values)


@pytest.mark.parametrize(("name", "method", "role", "kwargs", "auth"), ROUTES, ids=str)
def test_api_permission_matrix(
    name: str, method: str, role: Role, kwargs: tuple[str, ...], auth: str
) -> None:
    """A stream endpoint (``auth`` "session") is called with a session of each key."""
    url = _url(name, kwargs)
    client = Client()
    for header in ({}, {"Authorization": "Bearer sk_up_unknown"}):
        reply = client.generic(method, url, headers=header)
        assert reply.status_code == 401, (method, url, header)
        assert reply.json()["error"]["message"]
    for held in Role:
        key, secret = api_key_create(
            name=f"{held.value}-{method}-{len(url)}", role=held, actor=None
        )
        if auth == "session":
            secret = meter_event_session_create(api_key=key, now=timezone.now())[1]
        reply = client.generic(method, url, headers={"Authorization": f"Bearer {secret}"})
        if held.rank >= role.rank:
            assert reply.status_code not in (401, 403), (held, method, url, reply.content)
        else:
            assert reply.status_code == 403, (held, method, url)
            assert reply.json()["error"]["code"] == "insufficient_role"


def test_the_matrix_sees_every_endpoint() -> None:
    names = {name for name, *_ in ROUTES}
    assert {"api:meters", "api:meter", "api:meter_events", "api:not_found"} <= names
