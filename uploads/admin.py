from __future__ import annotations

from django.contrib import admin

from uploads.models import S3Connector, S3Object, Upload, UploadDuplicates
from usage_portal.admin import ReadOnlyAdmin


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = (
        "pk",
        "original_name",
        "status",
        "validate_only",
        "rows_read",
        "rows_imported",
        "rows_failed",
        "uploaded_by",
        "created",
    )
    list_filter = ("status", "validate_only")
    search_fields = ("original_name",)
    raw_id_fields = (
        "uploaded_by",
        "batch",
        "validated_upload",
        "reverted_by",
        "cancel_requested_by",
    )
    readonly_fields = ("created",)


@admin.register(UploadDuplicates)
class UploadDuplicatesAdmin(ReadOnlyAdmin):
    """Written only by the pipeline; the upload page shows them with their twins."""

    list_display = ("upload", "start", "rows")
    raw_id_fields = ("upload",)


@admin.register(S3Connector)
class S3ConnectorAdmin(ReadOnlyAdmin):
    """Managed on the connectors' pages (the secret is encrypted and never shown)."""

    list_display = ("name", "bucket", "prefix", "region", "endpoint_url", "paused_at")
    exclude = ("secret_encrypted",)


@admin.register(S3Object)
class S3ObjectAdmin(ReadOnlyAdmin):
    """Written only by the connectors' polls and downloads."""

    list_display = ("connector", "key", "etag", "state", "upload", "found_at")
    list_filter = ("state",)
    search_fields = ("key",)
    raw_id_fields = ("connector", "upload")
