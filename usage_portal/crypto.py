"""Secrets the portal must use again (an S3 connector's secret key), encrypted at rest.

Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``) keyed by the setting
``USAGE_ENCRYPTION_KEYS``: Fernet keys separated by commas, the first encrypting, all
decrypting, so a key can be rotated (add the new key first, re-save the secrets, drop the
old one). Unset, the key is derived from ``SECRET_KEY``, so changing that makes stored secrets
unreadable: set ``USAGE_ENCRYPTION_KEYS`` in production.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with the configured keys."""


def _fernet() -> MultiFernet:
    configured = [key.strip() for key in settings.USAGE_ENCRYPTION_KEYS.split(",") if key.strip()]
    if not configured:
        digest = hashlib.sha256(f"usage-portal-secrets:{settings.SECRET_KEY}".encode()).digest()
        configured = [base64.urlsafe_b64encode(digest).decode()]
    return MultiFernet([Fernet(key.encode()) for key in configured])


def secret_encrypt(plain: str) -> str:
    return _fernet().encrypt(plain.encode()).decode()


def secret_decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "The stored secret cannot be decrypted: USAGE_ENCRYPTION_KEYS (or SECRET_KEY) "
            "changed since it was saved. Enter the secret again."
        ) from None
