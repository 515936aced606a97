"""Celery tasks for billing: thin wrappers around services."""

from __future__ import annotations

from celery import shared_task

from billing import services


@shared_task(name="billing.tasks.invoices_advance")
def invoices_advance() -> dict[str, int]:
    """Run every minute by beat: expire credits, open drafts for ended periods, finalize
    drafts whose grace period is over. Idempotent, so overlapping runs are harmless."""
    return services.invoices_advance()
