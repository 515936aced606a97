"""Settings for Usage Portal: one file, driven by the environment.

With no DATABASE_URL and no CELERY_BROKER_URL the portal runs embedded: SQLite and
kombu's filesystem broker under ``var/``. Every setting is documented in ``.env.example``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("USAGE_PORTAL_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, *, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DEBUG = env_bool("DJANGO_DEBUG", default=False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG and env_bool("DJANGO_REQUIRE_SECRET_KEY", default=False):
        raise RuntimeError("DJANGO_SECRET_KEY must be set in production.")
    SECRET_KEY = "insecure-development-key-set-DJANGO_SECRET_KEY-in-production"  # noqa: S105
ALLOWED_HOSTS = [
    h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h
]
CSRF_TRUSTED_ORIGINS = [
    o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "usage_portal",
    "meters",
    "customers",
    "events",
    "usage",
    "alerts",
    "uploads",
    "billing",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "usage_portal.urls"
WSGI_APPLICATION = "usage_portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "usage_portal.roles.role_context",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # The page cache of each connection, in MB: a ceiling, not an allocation. 512 MB beside
    # 64 MB imported 1M rows at 18,000 against 16,700 rows/s (100,000-row chunks, one run
    # each): within this machine's noise, so the default stays.
    SQLITE_CACHE_MB = int(os.environ.get("USAGE_PORTAL_SQLITE_CACHE_MB", "64"))
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            # USAGE_PORTAL_SQLITE_NAME points a process (a test's Celery worker) at another file.
            "NAME": os.environ.get("USAGE_PORTAL_SQLITE_NAME", str(VAR_DIR / "db.sqlite3")),
            # A file, not memory, so that a Celery worker started by the tests shares it.
            "TEST": {"NAME": VAR_DIR / "test-db.sqlite3"},
            "OPTIONS": {
                "init_command": (
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                    f"PRAGMA cache_size=-{SQLITE_CACHE_MB * 1024}; "
                    "PRAGMA wal_autocheckpoint=10000; PRAGMA mmap_size=268435456;"
                ),
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
if not CELERY_BROKER_URL:
    BROKER_DIR = VAR_DIR / "broker"
    for folder in ("queue", "processed", "control"):
        (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        "control_folder": str(BROKER_DIR / "control"),
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {}
# Billing: open draft invoices for closed periods and finalize them after the grace period.
CELERY_BEAT_SCHEDULE["billing-invoices-advance"] = {
    "task": "billing.tasks.invoices_advance",
    "schedule": 60.0,
}

# --- Auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- I18n, time -----------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static and media -----------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "staticfiles"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
MANIFEST_STATIC = env_bool("DJANGO_MANIFEST_STATIC", default=False)
# Without collectstatic (make run, tests), WhiteNoise serves straight from static/.
WHITENOISE_USE_FINDERS = not MANIFEST_STATIC
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if MANIFEST_STATIC
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Uploaded files stream to disk in chunks; never held whole in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- Security -------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if env_bool("DJANGO_SECURE", default=False):
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Usage Portal ---------------------------------------------------------------------------
# How far back an event's timestamp may lie, and how far ahead (Stripe: 35 days, 5 minutes).
USAGE_TIMESTAMP_MAX_AGE_DAYS = int(os.environ.get("USAGE_TIMESTAMP_MAX_AGE_DAYS", "35"))
USAGE_TIMESTAMP_MAX_FUTURE_SECONDS = int(
    os.environ.get("USAGE_TIMESTAMP_MAX_FUTURE_SECONDS", "300")
)
USAGE_UPLOAD_MAX_BYTES = int(os.environ.get("USAGE_UPLOAD_MAX_BYTES", str(1024**3)))
# CSV uploads: rows per committed chunk, the longest line accepted, and when a job counts as
# stale for the periodic re-queue (queued but never started; running with no heartbeat).
# Rows per chunk (a transaction on PostgreSQL; on SQLite several chunks commit together);
# unset: 20,000 on PostgreSQL, 100,000 on SQLite. See uploads/limits.py.
if "USAGE_UPLOAD_CHUNK_ROWS" in os.environ:
    USAGE_UPLOAD_CHUNK_ROWS = int(os.environ["USAGE_UPLOAD_CHUNK_ROWS"])
# Connections committing an upload's chunks at once (0: none, the job's own thread commits);
# unset: 2 on PostgreSQL, 1 on SQLite. See uploads/writers.py.
if "USAGE_UPLOAD_WRITERS" in os.environ:
    USAGE_UPLOAD_WRITERS = int(os.environ["USAGE_UPLOAD_WRITERS"])
# SQLite: an import's writer commits its chunks together, at least every this many seconds
# (sooner when someone else wants the write lock), with this page cache in MB. See
# uploads/writers.py (Span) and usage_portal/sqlite_lock.py.
USAGE_UPLOAD_SQLITE_SPAN_SECONDS = float(os.environ.get("USAGE_UPLOAD_SQLITE_SPAN_SECONDS", "20"))
USAGE_UPLOAD_SQLITE_CACHE_MB = int(os.environ.get("USAGE_UPLOAD_SQLITE_CACHE_MB", "1024"))
# Files with more rows than this count identical rows on disk, in an extra pass, so a
# worker's memory stays bounded whatever the file's size (8 bytes a row in memory up to it).
USAGE_UPLOAD_COUNTER_MEMORY_ROWS = int(
    os.environ.get("USAGE_UPLOAD_COUNTER_MEMORY_ROWS", "5000000")
)
# Arrow (the upload pipeline's column work) allocates with malloc rather than its bundled
# mimalloc, which kept about 50 MB more of a worker's memory resident (measured, 1M rows).
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
USAGE_UPLOAD_MAX_LINE_BYTES = int(os.environ.get("USAGE_UPLOAD_MAX_LINE_BYTES", str(1024**2)))
# The most columns a header may name (a wider file fails at once), and how often a running
# job writes its heartbeat and looks for a cancellation inside each long pass over the file.
USAGE_UPLOAD_MAX_COLUMNS = int(os.environ.get("USAGE_UPLOAD_MAX_COLUMNS", "10000"))
USAGE_UPLOAD_HEARTBEAT_SECONDS = float(os.environ.get("USAGE_UPLOAD_HEARTBEAT_SECONDS", "10"))
USAGE_UPLOAD_QUEUED_STALE_SECONDS = int(os.environ.get("USAGE_UPLOAD_QUEUED_STALE_SECONDS", "120"))
USAGE_UPLOAD_RUNNING_STALE_SECONDS = int(
    os.environ.get("USAGE_UPLOAD_RUNNING_STALE_SECONDS", "300")
)
CELERY_BEAT_SCHEDULE["uploads-requeue-stale"] = {
    "task": "uploads.requeue_stale",
    "schedule": float(os.environ.get("USAGE_UPLOAD_REQUEUE_EVERY_SECONDS", "60")),
}
# S3 import: every connector is polled this often; files up to USAGE_S3_MAX_OBJECT_BYTES.
USAGE_S3_POLL_SECONDS = float(os.environ.get("USAGE_S3_POLL_SECONDS", "300"))
USAGE_S3_MAX_OBJECT_BYTES = int(os.environ.get("USAGE_S3_MAX_OBJECT_BYTES", str(1024**3)))
# How long one request to a store may take (connecting, or waiting for bytes), in seconds.
USAGE_S3_TIMEOUT_SECONDS = float(os.environ.get("USAGE_S3_TIMEOUT_SECONDS", "20"))
CELERY_BEAT_SCHEDULE["uploads-s3-poll"] = {
    "task": "uploads.s3_poll",
    "schedule": USAGE_S3_POLL_SECONDS,
}
# Stored secrets (an S3 connector's) are encrypted with these Fernet keys (usage_portal.crypto).
USAGE_ENCRYPTION_KEYS = os.environ.get("USAGE_ENCRYPTION_KEYS", "")
# Hosts on internal addresses the portal may still send requests to (usage_portal.outbound).
USAGE_OUTBOUND_ALLOWED_HOSTS = os.environ.get("USAGE_OUTBOUND_ALLOWED_HOSTS", "")
# The meter overview's daily rollups are refreshed after each commit; this sweep catches a
# refresh message that was lost (broker down at commit time).
# The v2 event stream's inbox is drained after each request (at most twice a second per
# web process); this sweep takes what a lost message left, and STREAM_DRAIN_EVENTS is how
# many events one drain transaction hands to the core.
CELERY_BEAT_SCHEDULE["api-stream-drain"] = {"task": "api.stream_drain", "schedule": 30.0}
CELERY_BEAT_SCHEDULE["api-prune"] = {"task": "api.prune", "schedule": 3600.0}
STREAM_DRAIN_EVENTS = int(os.environ.get("USAGE_STREAM_DRAIN_EVENTS", "20000"))
CELERY_BEAT_SCHEDULE["meters-usage-days-refresh"] = {
    "task": "meters.usage_days_refresh",
    "schedule": 60.0,
}
# A commit queues its meters' refresh (unless one is queued already); it runs once no commit
# of the meter came for USAGE_DAYS_REFRESH_QUIET_SECONDS, or at the latest
# USAGE_DAYS_REFRESH_MAX_WAIT_SECONDS after it was queued, so the chunks of an import share
# one refresh. The sweep forgets a queued refresh older than USAGE_DAYS_REFRESH_LOST_SECONDS
# (its message was lost).
USAGE_DAYS_REFRESH_QUIET_SECONDS = float(os.environ.get("USAGE_DAYS_REFRESH_QUIET_SECONDS", "2"))
USAGE_DAYS_REFRESH_MAX_WAIT_SECONDS = int(
    os.environ.get("USAGE_DAYS_REFRESH_MAX_WAIT_SECONDS", "300")
)
USAGE_DAYS_REFRESH_LOST_SECONDS = int(os.environ.get("USAGE_DAYS_REFRESH_LOST_SECONDS", "900"))
# Invoice finalization grace period (Stripe: default 1 hour, at most 72 hours, and always
# shorter than the billing interval). Late usage inside it still lands on the invoice.
BILLING_GRACE_PERIOD_MINUTES = int(os.environ.get("BILLING_GRACE_PERIOD_MINUTES", "60"))
# Usage alerts: webhook delivery attempts, the first retry delay (doubling, capped at an
# hour) and the request timeout.
USAGE_ALERT_WEBHOOK_MAX_ATTEMPTS = int(os.environ.get("USAGE_ALERT_WEBHOOK_MAX_ATTEMPTS", "8"))
USAGE_ALERT_WEBHOOK_BACKOFF_SECONDS = float(
    os.environ.get("USAGE_ALERT_WEBHOOK_BACKOFF_SECONDS", "30")
)
USAGE_ALERT_WEBHOOK_TIMEOUT_SECONDS = float(
    os.environ.get("USAGE_ALERT_WEBHOOK_TIMEOUT_SECONDS", "10")
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
