"""Django admin for superusers: the API's records, read-only. Keys are made and revoked on
the portal's API keys page (their secrets are never shown again anywhere)."""

from __future__ import annotations

from django.contrib import admin

from api.models import ApiKey, IdempotentReply, MeterEventSession, StreamRequest
from usage_portal.admin import ReadOnlyAdmin


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = ("name", "prefix", "created", "created_by", "last_used_at", "revoked_at")
    search_fields = ("name", "prefix")
    exclude = ("secret_digest",)


@admin.register(IdempotentReply)
class IdempotentReplyAdmin(ReadOnlyAdmin):
    list_display = ("key", "api_key", "status", "created")
    search_fields = ("key",)


@admin.register(MeterEventSession)
class MeterEventSessionAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "api_key", "created", "expires_at")
    exclude = ("token_digest",)


@admin.register(StreamRequest)
class StreamRequestAdmin(ReadOnlyAdmin):
    list_display = ("pk", "api_key", "received_at", "event_count", "drained_at", "batch")
    list_filter = ("drained_at",)
