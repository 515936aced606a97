"""Staff roles: support reads, finance also records usage, admin also manages.

Roles are Django groups (created by a data migration) and form a ladder: every role can do
what the roles below it can. Superusers rank as admin. Each view declares the lowest role it
accepts with ``@role_required``; the permission-matrix test reads that declaration.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from functools import wraps
from typing import Any, TypeVar, cast

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, PermissionsMixin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest


class Role(StrEnum):
    SUPPORT = "support"
    FINANCE = "finance"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return ROLE_RANKS[self]


ROLE_RANKS = {Role.SUPPORT: 1, Role.FINANCE: 2, Role.ADMIN: 3}

ViewFunc = TypeVar("ViewFunc", bound=Callable[..., Any])


# The user's role, cached on the user object for the rest of its request.
_ROLE_CACHE = "_usage_portal_role"


def user_role(user: AbstractBaseUser | AnonymousUser) -> Role | None:
    """The highest role the user holds, or None."""
    # Groups and is_superuser come with PermissionsMixin (auth.User); AnonymousUser lacks it.
    if not isinstance(user, PermissionsMixin) or not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return Role.ADMIN
    if hasattr(user, _ROLE_CACHE):
        return cast("Role | None", getattr(user, _ROLE_CACHE))
    names = set(user.groups.values_list("name", flat=True))
    held = [role for role in Role if role.value in names]
    role = max(held, key=lambda r: r.rank) if held else None
    setattr(user, _ROLE_CACHE, role)
    return role


def has_role(user: AbstractBaseUser | AnonymousUser, role: Role) -> bool:
    held = user_role(user)
    return held is not None and held.rank >= role.rank


def role_required(role: Role) -> Callable[[ViewFunc], ViewFunc]:
    """Refuse, with 403, users below ``role``. Anonymous users never get here: the login
    middleware sends them to the login page first."""

    def decorator(view: ViewFunc) -> ViewFunc:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if not has_role(request.user, role):
                raise PermissionDenied(f"This page needs the {role.value} role.")
            return view(request, *args, **kwargs)

        wrapped.required_role = role  # type: ignore[attr-defined]
        return wrapped  # type: ignore[return-value]

    return decorator


def role_context(request: HttpRequest) -> dict[str, Any]:
    role = user_role(request.user) if hasattr(request, "user") else None
    return {
        "user_role": role,
        "is_finance": role is not None and role.rank >= Role.FINANCE.rank,
        "is_admin": role is not None and role.rank >= Role.ADMIN.rank,
    }
