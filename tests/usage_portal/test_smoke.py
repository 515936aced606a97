from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_anonymous_is_sent_to_login(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_support_sees_home(support_client: Client) -> None:
    response = support_client.get("/")
    assert response.status_code == 200
    assert b"sam-support" in response.content or b"support" in response.content
