"""gunicorn's settings for the portal, as Operations in the README runs it::

    .venv/bin/gunicorn -c python:usage_portal.gunicorn usage_portal.wsgi

Threaded workers keep clients' connections alive (the SDK reuses its connection: no TCP
handshake per call), one process per core and one more, four threads each. The C HTTP
parser (gunicorn[fast]) is used when installed. Each worker connects to the broker as it
starts, so its first API write does not wait a third of a second for it. Environment:
``USAGE_PORTAL_BIND`` (0.0.0.0:8000), ``WEB_CONCURRENCY`` (processes),
``USAGE_PORTAL_THREADS`` (threads per process).
"""

from __future__ import annotations

import os
from typing import Any

bind = os.environ.get("USAGE_PORTAL_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", str((os.cpu_count() or 1) + 1)))
worker_class = "gthread"
threads = int(os.environ.get("USAGE_PORTAL_THREADS", "4"))
keepalive = 75  # seconds; the SDK's HTTP client keeps its connection open between calls


def post_worker_init(worker: Any) -> None:
    from api.stream import inbox_drain_soon

    inbox_drain_soon()  # the sender thread connects to the broker (and queues one drain)
