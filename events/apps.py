"""The write side: batches, events, rejections, hourly rollups and the ingestion core."""

from __future__ import annotations

from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
