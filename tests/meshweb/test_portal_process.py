"""The portal as a real process on the embedded default: demo seed, a token from the CLI, the example job accepted,
correlation ids in responses and in the JSON logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
INFERMESH = [sys.executable, "-m", "meshweb.cli"]


def request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read() or b"null")


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    env["INFERMESH_DATA_DIR"] = str(tmp_path / "data")
    env["INFERMESH_ADMIN_PASSWORD"] = "demo-admin-pw"
    return env


@pytest.fixture
def portal(embedded_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path / "portal.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*INFERMESH, "portal", "--demo", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=embedded_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if request(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"portal did not start: {log.read_text()}")
        yield base, log
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_fresh_portal_accepts_the_example_job(portal: tuple[str, Path], embedded_env: dict[str, str]) -> None:
    base, log = portal
    token = subprocess.run(
        [*INFERMESH, "token", "create", "--tenant", "demo", "--role", "member"],
        cwd=ROOT,
        env=embedded_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert token.startswith("im_")
    body = (ROOT / "docs/examples/job.json").read_bytes()
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "traceparent": traceparent}
    status, resp_headers, job = request(f"{base}/api/v1/jobs/", body, headers)
    assert status == 201, job
    assert job["tenant"] == "demo" and job["status"] == "pending"
    assert resp_headers["X-Request-ID"] == "4bf92f3577b34da6a3ce929d0e0e4736"

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [
        entry for entry in lines if entry.get("logger") == "meshweb.access" and entry.get("path") == "/api/v1/jobs/"
    ]
    assert access and access[-1]["correlation_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert access[-1]["status"] == 201

    # Every file of the embedded default lives under INFERMESH_DATA_DIR.
    data = Path(embedded_env["INFERMESH_DATA_DIR"])
    assert (data / "portal.sqlite3").exists()


def test_unknown_tenant_for_token_is_a_clear_error(embedded_env: dict[str, str]) -> None:
    result = subprocess.run(
        [*INFERMESH, "token", "create", "--tenant", "nope", "--role", "member"],
        cwd=ROOT,
        env=embedded_env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "no tenant 'nope'" in result.stderr


def test_bad_bind_is_refused(embedded_env: dict[str, str]) -> None:
    result = subprocess.run(
        [*INFERMESH, "portal", "--bind", "localhost"], cwd=ROOT, env=embedded_env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "expected HOST:PORT" in result.stderr
