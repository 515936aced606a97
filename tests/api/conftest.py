"""The official stripe SDK against the portal over real HTTP (pytest-django's live server)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import stripe

from api.credentials import credentials_forget
from api.services import api_key_create
from events.ingestion import precheck_caches_clear
from usage_portal.roles import Role


@pytest.fixture
def api_base(live_server) -> str:
    return live_server.url.rstrip("/")  # the SDK does not strip a trailing slash


@pytest.fixture
def secret_for(transactional_db) -> Callable[[Role], str]:
    """A new key of ``role``; its secret."""
    made = iter(range(1000))

    def make(role: Role) -> str:
        _, secret = api_key_create(name=f"{role.value}-key-{next(made)}", role=role, actor=None)
        return secret

    return make


@pytest.fixture
def client_for(
    api_base: str, secret_for, sdk_http: stripe.RequestsClient
) -> Callable[..., stripe.StripeClient]:
    """A StripeClient for a new key of ``role`` (or for ``secret``), both base addresses
    pointed at the portal, no retries."""

    def make(role: Role = Role.FINANCE, *, secret: str | None = None) -> stripe.StripeClient:
        return stripe.StripeClient(
            secret or secret_for(role),
            base_addresses={"api": api_base, "meter_events": api_base},
            max_network_retries=0,
            http_client=sdk_http,
        )

    return make


@pytest.fixture(autouse=True)
def sdk_http() -> Iterator[stripe.RequestsClient]:
    """The SDK's HTTP client for the test, closed after it: a kept-alive connection keeps the
    live server's handler thread, and its database connection, open past the test. No
    telemetry file in the home folder, no retries, and the module-level settings put back."""
    saved = (stripe.api_key, stripe.api_base, stripe.meter_events_api_base)
    stripe.enable_telemetry = False
    stripe.max_network_retries = 0
    http = stripe.RequestsClient()
    stripe.default_http_client = http
    yield http
    http.close()
    stripe.default_http_client = None
    stripe.api_key, stripe.api_base, stripe.meter_events_api_base = saved


@pytest.fixture(autouse=True)
def process_caches_cleared() -> Iterator[None]:
    """Each test starts with no cached keys, meters or customers (the database is new)."""
    credentials_forget()
    precheck_caches_clear()
    yield
    credentials_forget()
    precheck_caches_clear()
