"""Session fixtures of the identity tests: a real OIDC provider, a real portal process configured for it (on its
own PostgreSQL database and Redis when the suite runs with them), and Debian's chromium through Playwright."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.identity.oidc_support import API_RESOURCE, OidcProvider, start_provider
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
INFERMESH = [sys.executable, "-m", "meshweb.cli"]
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
PORTAL_CLIENT = {"client_id": "portal", "client_secret": "portal-secret-0123456789"}


def http(
    url: str, *, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        raw = err.read()
        status = err.code
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class Portal:
    url: str
    env: dict[str, str]
    mapping_file: Path
    admin_token: str
    provider: OidcProvider
    log: Path

    def set_mapping(self, rules: list[dict[str, str]]) -> None:
        tmp = self.mapping_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rules": rules}))
        # A new mtime even within the same clock tick of the previous write.
        stat = self.mapping_file.stat() if self.mapping_file.exists() else None
        tmp.replace(self.mapping_file)
        if stat is not None and self.mapping_file.stat().st_mtime_ns == stat.st_mtime_ns:
            os.utime(self.mapping_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))

    def api(self, path: str, token: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return http(f"{self.url}{path}", method=method, body=data, headers=headers)

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [*INFERMESH, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


def _database_env(base: dict[str, str]) -> dict[str, str]:
    """Point the portal process at its own PostgreSQL database (created afresh), or at the embedded default."""
    url = base.get("DATABASE_URL", "")
    if not url:
        return base
    import psycopg

    parts = urllib.parse.urlsplit(url)
    name = f"infermesh_identity_{os.getpid()}"
    admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return {**base, "DATABASE_URL": urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))}


def _drop_database(env: dict[str, str]) -> None:
    url = env.get("DATABASE_URL", "")
    if not url:
        return
    import psycopg

    parts = urllib.parse.urlsplit(url)
    admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')


@pytest.fixture(scope="session")
def oidc_portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    work = tmp_path_factory.mktemp("identity")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    provider = start_provider(
        work / "provider",
        [
            {
                **PORTAL_CLIENT,
                "redirect_uris": [f"{base}/oidc/callback/"],
                "post_logout_redirect_uris": [f"{base}/"],
                "token_endpoint_auth_method": "client_secret_post",
                "id_token_signed_response_alg": "RS256",
            },
            {
                "client_id": "robot-acme",
                "client_secret": "robot-acme-secret-0123456789",
                "grant_types": ["client_credentials"],
                "response_types": [],
                "redirect_uris": [],
                "groups": ["acme-ops"],
            },
            {
                "client_id": "robot-nobody",
                "client_secret": "robot-nobody-secret-0123456789",
                "grant_types": ["client_credentials"],
                "response_types": [],
                "redirect_uris": [],
                "groups": ["strangers"],
            },
        ],
    )
    mapping = work / "claim-mapping.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OIDC_")}
    env.update(provider.endpoints)
    env.update(
        INFERMESH_DATA_DIR=str(work / "data"),
        OIDC_RP_CLIENT_ID=PORTAL_CLIENT["client_id"],
        OIDC_RP_CLIENT_SECRET=PORTAL_CLIENT["client_secret"],
        OIDC_API_AUDIENCE=API_RESOURCE,
        OIDC_CLAIM_MAPPING_FILE=str(mapping),
        OIDC_JWKS_CACHE_S="60",
        OIDC_LEEWAY_S="0",
        INFERMESH_SVID_TTL_S="120",
        INFERMESH_TRUST_DOMAIN="mesh.test",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        CSRF_TRUSTED_ORIGINS=base,
    )
    env = _database_env(env)
    log = work / "portal.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([*INFERMESH, "manage", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True)
        portal = Portal(url=base, env=env, mapping_file=mapping, admin_token="", provider=provider, log=log)
        portal.set_mapping([])
        for slug in ("acme", "globex"):
            portal.cli("token", "create", "--tenant", slug, "--role", "viewer", "--create-tenant")
        portal.admin_token = portal.cli("token", "create", "--tenant", "acme", "--role", "platform_admin").strip()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*INFERMESH, "portal", "--no-migrate", "--bind", f"127.0.0.1:{port}"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if http(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"portal did not start: {log.read_text()}")
            time.sleep(0.2)
        yield portal
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        provider.stop()
        _drop_database(env)


def ensure_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError(f"{CHROMIUM} is missing and apt-get is not available to install Debian's chromium")
    subprocess.run([apt, "update", "-qq"], check=True, timeout=600)
    subprocess.run(
        [apt, "install", "-y", "-qq", "chromium"],
        check=True,
        timeout=900,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()
