"""The permission matrix: every URL of the URL conf, for every role.

For each URL name in the URL conf (walked recursively through includes) and each of
anonymous, a logged-in user with no role, support, finance and admin, the test checks:

* anonymous            -> redirect to the login page;
* below the view's role -> the 403 page;
* at or above it       -> one of the statuses in ``Expect.ok`` (never 403).

HOW TO ADD A VIEW: add ONE line to ``EXPECTED`` below. URL kwargs are built generically by
kwarg name (``meter_id``, ``customer_pk``, ``upload_pk`` ... see ``build_kwarg``); for a
plain ``pk`` say which object it is with ``pk="customer"`` (any key of ``BUILDERS``). If
your object has no builder yet, add a small function to ``BUILDERS``. POST views are
tested with POST (the test client does not enforce CSRF); give form data with ``data``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from tests.billing import builders as billing_builders
from tests.factories import CustomerFactory, MeterFactory, UploadFactory, UserFactory
from usage_portal.roles import Role


@dataclass(frozen=True)
class Expect:
    role: Role  # the lowest role the view accepts
    method: str = "get"
    # Statuses acceptable for users at or above ``role`` (None: 200 for GET, 302 for POST).
    ok: tuple[int, ...] | None = None
    # Which BUILDERS object a plain ``pk`` kwarg refers to.
    pk: str | None = None
    # Explicit kwargs: {kwarg: builder key}, for kwargs the generic rules cannot guess.
    kwargs: dict[str, str] = field(default_factory=dict)
    # Form data for POST views: a dict, or a function of the World returning one.
    data: dict[str, Any] | Callable[[World], dict[str, Any]] | None = None

    @property
    def statuses(self) -> tuple[int, ...]:
        if self.ok is not None:
            return self.ok
        return (302,) if self.method == "post" else (200,)


S, F, A = Role.SUPPORT, Role.FINANCE, Role.ADMIN

# One line per URL name. Keep it sorted by namespace; add yours at the end of its block.
EXPECTED: dict[str, Expect] = {
    "home": Expect(S),
    # meters
    "meters:meter_list": Expect(S),
    "meters:meter_create": Expect(A),
    "meters:meter_detail": Expect(S),
    "meters:meter_edit": Expect(A),
    "meters:meter_deactivate": Expect(A, method="post"),
    "meters:meter_reactivate": Expect(A, method="post", pk="inactive_meter"),
    # customers
    "customers:customer_list": Expect(S),
    "customers:customer_create": Expect(A),
    "customers:customer_import": Expect(A),
    "customers:customer_detail": Expect(S, pk="customer"),
    "customers:customer_edit": Expect(A, pk="customer"),
    # events
    "events:event_list": Expect(S),
    "events:event_entry": Expect(F),
    "events:event_customer_options": Expect(F),
    "events:event_cancel": Expect(F, method="post", pk="event"),
    # usage and alerts
    "usage:customer_usage": Expect(S, pk="customer"),
    "usage:usage_explain": Expect(S, pk="customer"),
    "usage:meter_overview": Expect(S),
    "usage:meter_live_feed": Expect(S, ok=(302,)),  # without htmx: the overview page
    "alerts:alert_list": Expect(S),
    "alerts:alert_create": Expect(A),
    "alerts:alert_detail": Expect(S, pk="alert"),
    "alerts:alert_status": Expect(A, method="post", pk="alert", data={"status": "inactive"}),
    "alerts:customer_alerts": Expect(S, pk="customer"),
    # uploads
    "uploads:upload_list": Expect(S),
    "uploads:upload_create": Expect(F),
    "uploads:upload_template": Expect(F),
    "uploads:upload_detail": Expect(S),
    "uploads:upload_error_file": Expect(S),
    "uploads:upload_duplicate_file": Expect(S),
    "uploads:upload_cancel": Expect(F, method="post"),
    "uploads:upload_revert": Expect(F, method="post"),
    "uploads:upload_import": Expect(F, method="post"),
    "uploads:upload_import_rest": Expect(F, method="post"),
    "uploads:connector_list": Expect(S),
    "uploads:connector_new": Expect(A),
    "uploads:connector_detail": Expect(S),
    "uploads:connector_edit": Expect(A),
    "uploads:connector_test": Expect(A, method="post"),
    "uploads:connector_sync": Expect(A, method="post"),
    "uploads:connector_pause": Expect(A, method="post"),
    # billing
    "billing:price_list": Expect(S),
    "billing:price_create": Expect(A),
    "billing:price_example": Expect(A),
    "billing:price_detail": Expect(S),
    "billing:price_archive": Expect(A, method="post"),
    "billing:price_unarchive": Expect(A, method="post"),
    "billing:customer_billing": Expect(S),
    "billing:customer_estimate": Expect(S, ok=(302,)),  # without htmx: the billing page
    "billing:customer_late_usage": Expect(S, ok=(302,)),  # without htmx: the billing page
    "billing:subscription_create": Expect(A),
    "billing:subscription_detail": Expect(S),
    "billing:subscription_cancel": Expect(A, method="post"),
    "billing:subscription_resume": Expect(A, method="post"),
    "billing:invoice_list": Expect(S),
    "billing:invoice_detail": Expect(S),
    "billing:credit_grant_create": Expect(A),
    "billing:credit_grant_void": Expect(A, method="post"),
    # API keys (the API itself authenticates by key: tests/api/test_permissions.py)
    "api_keys:key_list": Expect(A),
    "api_keys:key_create": Expect(A),
    "api_keys:key_revoke": Expect(A, method="post", pk="api_key"),
}

# Not walked: Django's own admin (superusers only, its own checks) and the auth views that
# must work without login.
# The API authenticates by key, not by login: tests/api/test_permissions.py has its matrix.
SKIPPED_NAMESPACES = {"admin", "api"}
SKIPPED_NAMES = {"login", "logout"}


# --- Objects the URLs point at ---------------------------------------------------------------
class World:
    """Objects built lazily, once per (URL, role) run, so writes by one run never leak."""

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.get(name)

    def get(self, name: str) -> Any:
        if name not in self._built:
            if name not in BUILDERS:
                pytest.fail(
                    f"No builder for {name!r}: add a function to BUILDERS in "
                    f"tests/usage_portal/test_permissions.py"
                )
            self._built[name] = BUILDERS[name](self)
        return self._built[name]


def _inactive_meter(world: World) -> Any:
    from django.utils import timezone

    return MeterFactory.create(status="inactive", deactivated_at=timezone.now())


def _event(world: World) -> Any:
    from events.ingestion import EventInput, event_batch_create, meter_events_ingest
    from events.models import EventBatch, MeterEvent

    meter, customer = MeterFactory.create(), CustomerFactory.create()
    report = meter_events_ingest(
        events=[
            EventInput(
                event_name=meter.event_name,
                payload={"stripe_customer_id": customer.external_id, "value": "1"},
            )
        ],
        batch=event_batch_create(source=EventBatch.Source.MANUAL),
    )
    return MeterEvent.objects.get(identifier=report.results[0].identifier)


def _alert(world: World) -> Any:
    from decimal import Decimal

    from alerts.services import usage_alert_create

    return usage_alert_create(
        actor=None, title="Permission check", meter=MeterFactory.create(), threshold=Decimal(10)
    )


BUILDERS: dict[str, Callable[[World], Any]] = {
    "meter": lambda world: MeterFactory.create(),
    "inactive_meter": _inactive_meter,
    "customer": lambda world: CustomerFactory.create(),
    "event": lambda world: _event(world),
    "alert": lambda world: _alert(world),
    "upload": lambda world: UploadFactory.create(),
    "price": billing_builders.build_price,
    "subscription": billing_builders.build_subscription,
    "invoice": billing_builders.build_invoice,
    "grant": billing_builders.build_grant,
    "api_key": lambda world: _api_key(world),
    "connector": lambda world: _connector(world),
}


def _connector(world: World) -> Any:
    from uploads.models import S3Connector

    # An internal endpoint: the test and sync views are refused at once, with no network.
    return S3Connector.objects.create(
        name=f"connector-{id(world)}",
        bucket="usage",
        endpoint_url="http://127.0.0.1:9",
        user=UserFactory.create(username=f"s3:connector-{id(world)}"),
    )


def _api_key(world: World) -> Any:
    from api.services import api_key_create

    return api_key_create(name=f"key-{id(world)}", role="support", actor=None)[0]


def build_kwarg(name: str, kwarg: str, expect: Expect, world: World) -> Any:
    if kwarg in expect.kwargs:
        return _public_key(world.get(expect.kwargs[kwarg]))
    if kwarg == "pk":
        if not expect.pk:
            pytest.fail(f"{name}: say which object `pk` is, e.g. Expect(..., pk='customer')")
        return world.get(expect.pk).pk
    if kwarg == "meter_id":
        target = expect.pk if expect.pk in ("meter", "inactive_meter") else "meter"
        return world.get(target).meter_id
    for suffix in ("_pk", "_id"):
        if kwarg.endswith(suffix) and kwarg.removesuffix(suffix) in BUILDERS:
            return world.get(kwarg.removesuffix(suffix)).pk
    pytest.fail(
        f"{name}: cannot build URL kwarg {kwarg!r}; add a builder named "
        f"{kwarg.removesuffix('_pk').removesuffix('_id')!r} to BUILDERS or pass kwargs=..."
    )


def _public_key(obj: Any) -> Any:
    return getattr(obj, "meter_id", None) or obj.pk


# --- Walking the URL conf --------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    name: str  # "namespace:name"
    kwargs: tuple[str, ...]
    callback: Callable[..., Any]


def _walk(resolvers: list[Any], namespace: str = "") -> Iterator[Route]:
    for entry in resolvers:
        if isinstance(entry, URLResolver):
            ns = entry.namespace
            if ns in SKIPPED_NAMESPACES:
                continue
            child_ns = f"{namespace}{ns}:" if ns else namespace
            yield from _walk(entry.url_patterns, child_ns)
        elif isinstance(entry, URLPattern):
            if not entry.name:
                raise AssertionError(f"URL pattern {entry.pattern} has no name: name it.")
            full = namespace + entry.name
            if full in SKIPPED_NAMES:
                continue
            kwargs = tuple(entry.pattern.regex.groupindex)
            yield Route(full, kwargs, entry.callback)


def all_routes() -> list[Route]:
    return list(_walk(get_resolver().url_patterns))


ROUTES = all_routes()
ROLES_BELOW_AND_AT = ("norole", Role.SUPPORT, Role.FINANCE, Role.ADMIN)


def test_every_url_name_is_in_the_table() -> None:
    names = {route.name for route in ROUTES}
    missing = sorted(names - EXPECTED.keys())
    assert not missing, (
        f"URL names missing from EXPECTED in tests/usage_portal/test_permissions.py: "
        f"{missing}. Add one line per name with the role the view requires."
    )
    stale = sorted(EXPECTED.keys() - names)
    assert not stale, f"EXPECTED has names no longer in the URL conf: {stale}"


def test_url_names_are_unique() -> None:
    names = [route.name for route in ROUTES]
    assert len(names) == len(set(names)), "two URL patterns share a name"


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_view_declares_the_role_in_the_table(route: Route) -> None:
    declared = getattr(route.callback, "required_role", None)
    assert declared is not None, (
        f"{route.name}: the view has no @role_required(Role.X). Every view must check its "
        f"own permission."
    )
    expect = EXPECTED.get(route.name)
    if expect is None:
        pytest.fail(f"{route.name} is missing from EXPECTED: add a line for it.")
    assert declared == expect.role, (
        f"{route.name}: view requires {declared}, table says {expect.role}"
    )


def _users() -> dict[Role | str, User]:
    return {
        "norole": UserFactory.create(username="nora-norole"),
        Role.SUPPORT: UserFactory.create(username="sam-support", role=Role.SUPPORT),
        Role.FINANCE: UserFactory.create(username="fay-finance", role=Role.FINANCE),
        Role.ADMIN: UserFactory.create(username="ada-admin", role=Role.ADMIN),
    }


def _request(client: Client, route: Route, expect: Expect) -> Any:
    world = World()
    kwargs = {kwarg: build_kwarg(route.name, kwarg, expect, world) for kwarg in route.kwargs}
    url = reverse(route.name, kwargs=kwargs)
    data = expect.data(world) if callable(expect.data) else (expect.data or {})
    if expect.method == "post":
        return url, client.post(url, data)
    return url, client.get(url, data)


@pytest.mark.django_db
@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_permission_matrix(route: Route) -> None:
    expect = EXPECTED.get(route.name)
    if expect is None:
        pytest.fail(
            f"{route.name} is missing from EXPECTED in tests/usage_portal/test_permissions.py: "
            f"add `{route.name!r}: Expect(Role.X, ...)`."
        )

    url, response = _request(Client(), route, expect)
    assert response.status_code == 302, f"anonymous {expect.method.upper()} {url}"
    assert response["Location"].startswith(reverse("login")), response["Location"]

    for who, user in _users().items():
        client = Client()
        client.force_login(user)
        url, response = _request(client, route, expect)
        allowed = isinstance(who, Role) and who.rank >= expect.role.rank
        label = f"{who} {expect.method.upper()} {url}"
        if allowed:
            assert response.status_code != 403, label
            assert response.status_code in expect.statuses, (
                f"{label}: got {response.status_code}, expected {expect.statuses}"
            )
        else:
            assert response.status_code == 403, f"{label}: got {response.status_code}"
            assert b"Access denied" in response.content, f"{label}: not the 403 page"


# --- The checker checks ----------------------------------------------------------------------
def test_walker_recurses_through_namespaced_includes_and_sees_unguarded_views() -> None:
    from django.http import HttpResponse
    from django.urls import include, path

    def unguarded(request: Any) -> HttpResponse:
        return HttpResponse()

    inner = ([path("x/<int:pk>/", unguarded, name="inner_view")], "inner")
    outer = ([path("", include(inner))], "outer")
    routes = list(_walk([path("a/", include(outer)), path("admin/", include(([], "admin")))]))
    assert [(route.name, route.kwargs) for route in routes] == [("outer:inner:inner_view", ("pk",))]
    assert getattr(routes[0].callback, "required_role", None) is None
