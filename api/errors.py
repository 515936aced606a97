"""Stripe's error object, and the errors every endpoint can raise.

v1 and v2 replies carry ``{"error": {"type", "code", "message", "param"}}``; the SDK picks
the exception class by HTTP status (v1) or by ``type`` first (v2): 400 invalid request, 401
authentication, 403 permission, 404 missing resource, 400 with ``idempotency_error``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ApiError(Exception):
    status: int
    message: str
    code: str = ""
    param: str = ""
    type: str = "invalid_request_error"

    def body(self) -> dict[str, object]:
        error: dict[str, object] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
        if self.param:
            error["param"] = self.param
        return {"error": error}


def invalid(message: str, *, param: str = "", code: str = "parameter_invalid") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def missing_resource(message: str, *, param: str = "id") -> ApiError:
    return ApiError(404, message, code="resource_missing", param=param)
