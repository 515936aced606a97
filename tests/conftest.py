from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.factories import UserFactory
from usage_portal.roles import Role

PASSWORD = "portal-test-password"


@pytest.fixture
def support_user(db: None) -> User:
    return UserFactory(username="sam-support", role=Role.SUPPORT)


@pytest.fixture
def finance_user(db: None) -> User:
    return UserFactory(username="fay-finance", role=Role.FINANCE)


@pytest.fixture
def admin_role_user(db: None) -> User:
    return UserFactory(username="ada-admin", role=Role.ADMIN)


def _client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def support_client(support_user: User) -> Client:
    return _client_for(support_user)


@pytest.fixture
def finance_client(finance_user: User) -> Client:
    return _client_for(finance_user)


@pytest.fixture
def admin_client_role(admin_role_user: User) -> Client:
    return _client_for(admin_role_user)


# --- Browser ---------------------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    # Playwright's sync API runs an event loop in this thread; Django's ORM must still be
    # usable from the test body.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):  # type: ignore[no-untyped-def]
    context = browser.new_context(base_url=live_server.url, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def browser_login(page, username: str, password: str = PASSWORD) -> None:  # type: ignore[no-untyped-def]
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)
