from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.factories import UserFactory
from usage_portal.roles import Role

PASSWORD = "portal-test-password"


@pytest.fixture
def support_user(db: None) -> User:
    return UserFactory.create(username="sam-support", role=Role.SUPPORT)


@pytest.fixture
def finance_user(db: None) -> User:
    return UserFactory.create(username="fay-finance", role=Role.FINANCE)


@pytest.fixture
def admin_role_user(db: None) -> User:
    return UserFactory.create(username="ada-admin", role=Role.ADMIN)


def _client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def support_client(support_user: User) -> Client:
    return _client_for(support_user)


@pytest.fixture
def finance_client(finance_user: User) -> Client:
    return _client_for(finance_user)


@pytest.fixture
def admin_client_role(admin_role_user: User) -> Client:
    return _client_for(admin_role_user)


# --- Browser ---------------------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    # Playwright's sync API runs an event loop in this thread; Django's ORM must still be
    # usable from the test body.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def browser_login(page, username: str, password: str = PASSWORD) -> None:
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)


# --- Celery worker ---------------------------------------------------------------------------
# A real worker process (`.venv/bin/celery -A usage_portal worker`) on the same broker as the
# tests and on pytest-django's TEST database. Use it with
# `@pytest.mark.django_db(transaction=True)` (the worker only sees committed data) and mark
# the test `@pytest.mark.worker`.
def _die_with_parent() -> None:
    """Linux: SIGTERM the worker if pytest dies, so no orphan keeps consuming the queue."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class WorkerProcess:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processes(self) -> list[int]:
        """The worker's process and its pool's (Linux: read from /proc)."""
        found = [self.process.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                        found.append(int(entry.name))
        return found

    def has_loaded(self, fragment: str) -> bool:
        """Whether any of its processes has mapped a file whose path holds ``fragment``
        (a library's compiled modules: imported)."""
        for pid in self.processes():
            with contextlib.suppress(OSError):
                if fragment in Path(f"/proc/{pid}/maps").read_text():
                    return True
        return False

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes: no clean shutdown, no acks."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def worker_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the test process, pointed at the test database."""
    from django.db import connection

    env = dict(os.environ)
    database = connection.settings_dict
    if connection.vendor == "postgresql":
        user = quote(str(database.get("USER") or ""), safe="")
        password = quote(str(database.get("PASSWORD") or ""), safe="")
        credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = database.get("HOST") or "127.0.0.1"
        port = database.get("PORT") or 5432
        env["DATABASE_URL"] = f"postgres://{credentials}{host}:{port}/{database['NAME']}"
    else:
        env.pop("DATABASE_URL", None)
        env["USAGE_PORTAL_SQLITE_NAME"] = str(database["NAME"])
    env.update(extra or {})
    return env


def celery_purge() -> None:
    from usage_portal.celery import app

    with contextlib.suppress(Exception):
        app.control.purge()


@pytest.fixture
def celery_worker_factory(
    transactional_db: None, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers with ``start(env={...})``; every one is stopped after the test (before
    the test database is flushed). Messages left in the queue by earlier tests are purged."""
    from django.conf import settings

    celery_purge()
    started: list[WorkerProcess] = []

    def start(env: dict[str, str] | None = None, ready_timeout: float = 60) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started) + 1}.log"
        command = [
            str(Path(settings.BASE_DIR) / ".venv" / "bin" / "celery"),
            "-A",
            "usage_portal",
            "worker",
            "--loglevel=INFO",
            "--concurrency=1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"test-{uuid.uuid4().hex[:8]}@%h",
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=settings.BASE_DIR,
                env=worker_environment(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        worker = WorkerProcess(process, log_path)
        started.append(worker)
        deadline = time.monotonic() + ready_timeout
        while " ready." not in worker.log:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"The Celery worker did not start:\n{worker.log[-3000:]}")
            time.sleep(0.2)
        return worker

    yield start
    for worker in started:
        worker.stop()
    celery_purge()


@pytest.fixture
def celery_worker(celery_worker_factory: Callable[..., WorkerProcess]) -> WorkerProcess:
    """One running worker for the test."""
    return celery_worker_factory()
