"""Fixtures of the browser tests: the portal under its ASGI server with the Redis channel layer, and Debian's
chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_PASSWORD = "browser-admin-pw-1"


def sign_in(page: Any, portal_url: str) -> None:
    """Sign in as the seeded admin through the dashboard's login form, as a person would."""
    page.goto(f"{portal_url}/dashboard/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{portal_url}/dashboard/")


@dataclass
class Portal:
    url: str
    port: int
    env: dict[str, str]
    log: Path

    def run_python(self, code: str) -> str:
        """Run Django code in a separate process on the portal's database and channel layer (as a task would)."""
        result = subprocess.run(
            [sys.executable, "-c", "import django; django.setup()\n" + code],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout


# Package scope: Playwright's sync API keeps an event loop running in this thread while it is open, which would break
# every asyncio test collected after this package.
@pytest.fixture(scope="package")
def redis_url() -> str:
    base = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    # A database of its own, so other suites publishing to the "dashboard" group on Redis cannot reach our sockets
    # (2..10: `make test` gives 11..13 to its workers).
    root = base.rsplit("/", 1)[0] if base.rsplit("/", 1)[-1].isdigit() else base.rstrip("/")
    return f"{root}/{random.randint(2, 10)}"


@contextmanager
def served_portal(tmp: Path, port: int, env: dict[str, str]) -> Iterator[Portal]:
    """`infermesh portal --demo` on `port` with `env`, until it answers /healthz; stopped on exit."""
    log = tmp / "portal.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshweb.cli", "portal", "--demo", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"portal did not start: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield Portal(url=url, port=port, env=env, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="package")
def portal(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Portal]:
    tmp = tmp_path_factory.mktemp("portal")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL"}}
    env.update(
        {
            "INFERMESH_DATA_DIR": str(tmp / "data"),
            "INFERMESH_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "REDIS_URL": redis_url,
            # Without a doorbell the page would only learn of changes at this poll: far beyond the test's waits, so
            # a live update proves the Redis channel layer carried it.
            "INFERMESH_DASHBOARD_POLL_S": "600",
            "DJANGO_SETTINGS_MODULE": "meshweb.settings",
            "PYTHONUNBUFFERED": "1",
        }
    )
    with served_portal(tmp, port, env) as served:
        yield served


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: apt-get install -y chromium"
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def admin(browser: Any, portal: Portal) -> Iterator[Any]:
    """A browser context with the demo admin signed in through the login form."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{portal.url}/dashboard/")
    assert "/dashboard/login/" in page.url  # anonymous visitors are sent to the login page
    sign_in(page, portal.url)
    page.close()
    try:
        yield context
    finally:
        context.close()
