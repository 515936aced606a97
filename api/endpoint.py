"""What every API call goes through: authentication by key, the key's role, parameters,
``Idempotency-Key``, Stripe's error object, and a ``Request-Id`` on every reply.

A view decorated with ``api_endpoint`` takes ``(request, call, **url kwargs)`` and returns
the reply's JSON object (status 200) or ``(status, object)``; it raises ``ApiError`` (or a
service's ``ValidationError``) for errors. Nothing a client sends reaches Django's error
pages: malformed bodies, oversized ones, unknown parameters and crashes all come back as
JSON in Stripe's shape.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import (
    DisallowedHost,
    RequestDataTooBig,
    TooManyFieldsSent,
    ValidationError,
)
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from api import credentials
from api.errors import ApiError
from api.models import ApiKey, IdempotentReply, MeterEventSession
from api.objects import json_text
from api.params import form_params, json_params
from api.services import api_key_used, secret_digest
from usage_portal.roles import Role, user_role

logger = logging.getLogger(__name__)

IDEMPOTENCY_STALE = timedelta(minutes=2)  # a claimed key whose request never answered
_MAX_IDEMPOTENCY_KEY = 255


@dataclass
class ApiCall:
    """One authenticated call: its key, its parameters, and its Idempotency-Key (if any)."""

    key: ApiKey
    params: dict[str, Any]
    idempotency_key: str


View = Callable[..., Any]


# A POST's quick way: (status, reply JSON) when it could finish the call on its own, with the
# reply stored for the call's Idempotency-Key (the request digest is given), or None.
Fast = Callable[[ApiCall, str], tuple[int, str] | None]


def api_endpoint(
    *, body: str = "form", auth: str = "key", fast: Fast | None = None, **roles: Role
) -> Callable[[View], View]:
    """Make ``view`` an API endpoint answering the HTTP methods named in ``roles``, each
    for keys with at least its role (``GET=Role.SUPPORT, POST=Role.ADMIN``). ``body``:
    "form" (v1) or "json" (v2). ``auth``: "key", or "session" for the v2 stream, which
    is authenticated by a meter event session's token (its key's role applies). ``fast``:
    tried first for a POST; when it returns None the view runs as usual (the Idempotency-Key
    claimed first)."""

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            request_id = "req_" + secrets.token_hex(12)
            try:
                status, reply, replayed = _handle(
                    request, view, roles, body, auth, fast, args, kwargs
                )
            except ApiError as error:
                status, reply, replayed = error.status, error.body(), False
            response = _json_response(status, reply, request_id)
            if replayed:
                response["Idempotent-Replayed"] = "true"
            return response

        wrapped.api_roles = roles  # type: ignore[attr-defined]
        wrapped.api_auth = auth  # type: ignore[attr-defined]
        return login_not_required(csrf_exempt(wrapped))

    return decorator


def _json_response(status: int, reply: Any, request_id: str) -> HttpResponse:
    text = reply if isinstance(reply, str) else json_text(reply)
    response = HttpResponse(text, status=status, content_type="application/json")
    response["Request-Id"] = request_id
    response["X-Content-Type-Options"] = "nosniff"  # the API's handler runs no middleware
    response["Content-Length"] = str(len(response.content))
    return response


def _handle(
    request: HttpRequest,
    view: View,
    roles: dict[str, Role],
    body: str,
    auth: str,
    fast: Fast | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[int, Any, bool]:
    try:
        request.get_host()  # ALLOWED_HOSTS, as the pages' CommonMiddleware checks it
    except DisallowedHost:
        raise ApiError(
            400, "The Host header names no host this portal serves.", code="invalid_host"
        ) from None
    role = roles.get(request.method or "")
    if role is None:
        raise unrecognized(request)
    key, held = session_authenticate(request) if auth == "session" else authenticate(request)
    if held is None or held.rank < role.rank:
        raise ApiError(
            403,
            f"This API key's role ({held or 'none'}) can't make this request: it needs the "
            f"{role.value} role. Ask an admin for a key with that role.",
            code="insufficient_role",
        )
    params = _params(request, body)
    # From META: request.headers would first copy every header (a few % of a call).
    idempotency_key = request.META.get("HTTP_IDEMPOTENCY_KEY", "").strip()
    call = ApiCall(key=key, params=params, idempotency_key=idempotency_key)
    if request.method != "POST":
        status, reply = _run(view, request, call, args, kwargs)
        return status, reply, False
    if len(idempotency_key) > _MAX_IDEMPOTENCY_KEY:
        raise ApiError(
            400,
            f"The Idempotency-Key is longer than {_MAX_IDEMPOTENCY_KEY} characters.",
            type="idempotency_error",
            code="idempotency_key_too_long",
        )
    digest = ""
    if idempotency_key:
        digest = hashlib.sha256(
            json.dumps([request.path, params], sort_keys=True).encode()
        ).hexdigest()
    if fast is not None:
        try:
            done = fast(call, digest)
        except ApiError:
            raise
        except Exception:
            logger.exception("API call %s %s failed", request.method, request.path)
            raise _server_error() from None
        if done is not None:
            return done[0], done[1], False
    # Every other write: this process's reading of the key may be up to 2 s old. (The
    # stream's insert checks in its own statement.)
    if (
        auth != "session"
        and not ApiKey.objects.filter(pk=key.pk, revoked_at=None, user__is_active=True).exists()
    ):
        raise ApiError(401, "This API key was revoked.", code="api_key_invalid")
    if not idempotency_key:
        status, reply = _run(view, request, call, args, kwargs)
        return status, reply, False
    stored = _idempotency_claim(key, idempotency_key, digest)
    if stored is not None:
        return stored.status, stored.body, True
    try:
        status, reply = _run(view, request, call, args, kwargs)
    except ApiError as error:
        status, reply = error.status, error.body()
    text = json_text(reply)
    if status >= 500:  # not kept: a retry with the key runs again
        IdempotentReply.objects.filter(api_key=key, key=idempotency_key).delete()
    else:
        IdempotentReply.objects.filter(api_key=key, key=idempotency_key).update(
            status=status, body=text
        )
    return status, text, False


def _run(
    view: View, request: HttpRequest, call: ApiCall, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[int, Any]:
    try:
        result = view(request, call, *args, **kwargs)
    except ApiError:
        raise
    except ValidationError as error:
        raise validation_error(error) from error
    except Exception:
        logger.exception("API call %s %s failed", request.method, request.path)
        raise _server_error() from None
    if isinstance(result, tuple):
        return result
    return 200, result


def _server_error() -> ApiError:
    return ApiError(
        500,
        "Something went wrong on our side; nothing was recorded by this request. "
        "Try again; the error is logged.",
        type="api_error",
    )


def _bearer(request: HttpRequest) -> str:
    """The token of ``Authorization: Bearer <token>``, or ""."""
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def authenticate(request: HttpRequest) -> tuple[ApiKey, Role | None]:
    """The request's key and its role, read again after ``credentials.KEY_CACHE_SECONDS``."""
    secret = _bearer(request)
    if not secret:
        raise ApiError(
            401,
            "You did not provide an API key. Send it in the Authorization header "
            "(Authorization: Bearer sk_up_...); an admin creates keys on the API keys page.",
            type="invalid_request_error",
        )
    digest = secret_digest(secret)
    cached = credentials.reading(credentials.keys, digest)
    if cached is not None:
        key, role = cached
    else:
        key = ApiKey.objects.select_related("user").filter(secret_digest=digest).first()
        if key is None or not key.is_active or not key.user.is_active:
            shown = secret[:10] + "*" * 4 if len(secret) > 10 else "****"
            state = "revoked" if key is not None else "not known"
            raise ApiError(
                401, f"Invalid API Key provided: {shown} ({state}).", code="api_key_invalid"
            )
        role = user_role(key.user)
        credentials.remember(credentials.keys, digest, key, role)
    api_key_used(api_key=key, now=timezone.now())
    return key, role


def session_authenticate(request: HttpRequest) -> tuple[ApiKey, Role | None]:
    """The key behind a meter event session's token, while the session lasts, and its role."""
    token = _bearer(request)
    session, role = None, None
    if token:
        digest = secret_digest(token)
        cached = credentials.reading(credentials.sessions, digest)
        if cached is not None:
            session, role = cached
        else:
            session = (
                MeterEventSession.objects.select_related("api_key__user")
                .filter(token_digest=digest)
                .first()
            )
            if session is not None:
                role = user_role(session.api_key.user)
                credentials.remember(credentials.sessions, digest, session, role)
    if session is None:
        raise ApiError(
            401,
            "Send a meter event session's authentication_token as the Bearer token: create a "
            "session with POST /v2/billing/meter_event_session.",
            code="billing_meter_event_session_invalid",
        )
    if session.expires_at <= timezone.now():
        raise ApiError(
            401,
            "The meter event session expired (they last 15 minutes): create a new one.",
            type="temporary_session_expired",
            code="billing_meter_event_session_expired",
        )
    key = session.api_key
    if not key.is_active or not key.user.is_active:
        raise ApiError(401, "The session's API key is revoked.", code="api_key_invalid")
    api_key_used(api_key=key, now=timezone.now())
    return key, role


def _params(request: HttpRequest, body: str) -> dict[str, Any]:
    try:
        if request.method == "GET":
            return form_params(request.GET)
        if body == "json":
            return json_params(request.body)
        return form_params(request.POST)
    except RequestDataTooBig as error:
        raise ApiError(413, "The request body is too large.", code="request_too_large") from error
    except TooManyFieldsSent as error:
        raise ApiError(
            400, "The request has too many parameters.", code="parameter_invalid"
        ) from error


def _idempotency_claim(key: ApiKey, idempotency_key: str, digest: str) -> IdempotentReply | None:
    """Claim the key for this request (None), or the finished reply to replay. A key used
    with other parameters, or still running, is refused as Stripe refuses it."""
    now = timezone.now()
    try:
        with transaction.atomic():
            IdempotentReply.objects.create(
                api_key=key, key=idempotency_key, request_digest=digest, status=0, body=""
            )
        return None
    except IntegrityError:
        pass
    stored = IdempotentReply.objects.get(api_key=key, key=idempotency_key)
    if stored.request_digest != digest:
        raise ApiError(
            400,
            "Keys for idempotent requests can only be used with the same parameters they "
            f"were first used with. Try a key other than '{idempotency_key[:100]}' if you "
            "meant to make a different request.",
            type="idempotency_error",
            code="idempotency_key_in_use",
        )
    if stored.status:
        return stored
    taken_over = IdempotentReply.objects.filter(
        pk=stored.pk, status=0, created__lt=now - IDEMPOTENCY_STALE
    ).update(created=now)
    if taken_over:  # its first request never answered (a crash): this one runs it again
        return None
    raise ApiError(
        409,
        "A request with this Idempotency-Key is still being processed. Try again shortly.",
        type="idempotency_error",
        code="idempotency_key_in_use",
    )


def unrecognized(request: HttpRequest) -> ApiError:
    return ApiError(
        404,
        f"Unrecognized request URL ({request.method}: {request.path[:200]}). "
        "See the API section of the README for the endpoints.",
        code="resource_missing",
    )


_FIELD_PARAMS = {
    "aggregation_formula": "default_aggregation[formula]",
    "customer_mapping_key": "customer_mapping[event_payload_key]",
    "value_settings_key": "value_settings[event_payload_key]",
}


def validation_error(error: ValidationError) -> ApiError:
    """A service's ValidationError as Stripe's error: its first message, code and field."""
    if hasattr(error, "error_dict"):
        field_name, errors = next(iter(error.error_dict.items()))
        first = errors[0]
        param = _FIELD_PARAMS.get(field_name, field_name if field_name != "__all__" else "")
    else:
        first, param = error.error_list[0], ""
    message = first.message % first.params if first.params else first.message
    return ApiError(400, str(message), code=first.code or "parameter_invalid", param=param)
