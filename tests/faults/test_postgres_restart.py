"""PostgreSQL restarted (the machine's cluster, `pg_ctlcluster ... restart`) in the middle of a burst of job
submissions with Idempotency-Keys, through the real portal: every acknowledged job exists once, and every
submission that was not acknowledged succeeds when retried with its key, without a duplicate."""

from __future__ import annotations

import copy
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.mesh import Mesh, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
JOB = json.loads((ROOT / "docs/examples/job.json").read_text())
CLIENTS = 4
SUBMIT_S = 8.0


def pg_cluster() -> tuple[str, str]:
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip(), f"pg_lsclusters found no cluster: {out.stderr}"
    version, name = out.stdout.split()[:2]
    return version, name


def pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], timeout=30).returncode == 0


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path, agents=0, runtime=False, celery=False)
    try:
        mesh.start()
        mesh.db.query("UPDATE tenancy_quota SET gpus_max = 1000000, concurrent_jobs_max = 1000000, "
                      "gpu_hours_per_period = 1e12 RETURNING id")  # fmt: skip
        yield mesh
    finally:
        if not pg_ready():  # never leave the machine's PostgreSQL down
            version, name = pg_cluster()
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"], timeout=60)
            wait_for("PostgreSQL back", pg_ready, timeout=60)
        mesh.close()


def test_postgres_restart_during_job_submissions(portal: Mesh) -> None:
    acked: dict[str, int] = {}  # idempotency key -> job id from its first 201
    replays: dict[str, list[int]] = {}  # key -> job ids of later 201s for the same key
    failures: dict[str, list[str]] = {}  # key -> what each failed attempt got
    lock = threading.Lock()
    stop_at = time.monotonic() + SUBMIT_S

    def submit(client: httpx.Client, key: str, n: int) -> bool:
        body = copy.deepcopy(JOB) | {"name": f"restart-{n}", "tenant": "ops"}
        try:
            resp = client.post("/api/v1/jobs/", json=body, headers={"Idempotency-Key": key})
        except httpx.HTTPError as exc:
            what = type(exc).__name__
        else:
            if resp.status_code == 201:
                with lock:
                    if key in acked:
                        replays.setdefault(key, []).append(resp.json()["id"])
                    else:
                        acked[key] = resp.json()["id"]
                return True
            what = f"{resp.status_code} {resp.text[:120]}"
        with lock:
            failures.setdefault(key, []).append(what)
        return False

    def worker(c: int) -> None:
        headers = {"Authorization": f"Bearer {portal.token}"}
        with httpx.Client(base_url=portal.base, headers=headers, timeout=10) as client:
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                key = f"c{c}-{n}"
                submit(client, key, n)
                if n % 3 == 0 and key in acked:
                    submit(client, key, n)  # an acknowledged key retried at once: a replay, never a second job

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    version, name = pg_cluster()
    t0 = time.monotonic()
    done = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", "-m", "fast", version, name, "restart"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    wait_for("PostgreSQL back after the restart", pg_ready, timeout=60)
    pg_down_s = time.monotonic() - t0
    for t in threads:
        t.join(60)

    # Every submission that was never acknowledged is retried with its key until it is.
    unacked = sorted(set(failures) - set(acked))
    headers = {"Authorization": f"Bearer {portal.token}"}
    t_retry = time.monotonic()
    with httpx.Client(base_url=portal.base, headers=headers, timeout=10) as client:
        for key in unacked:
            n = int(key.split("-")[1])

            def retried(key: str = key, n: int = n) -> bool:
                return submit(client, key, n)

            wait_for(f"a retry of {key} acknowledged", retried, timeout=60)
    recover_s = time.monotonic() - t_retry

    rows = portal.db.query(
        "SELECT k.key, k.job_id FROM training_idempotencykey k JOIN tenancy_tenant t ON t.id = k.tenant_id "
        "WHERE t.slug = 'ops'"
    )
    by_key = dict(rows)
    jobs = portal.db.query(
        "SELECT j.id, j.name FROM training_trainingjob j JOIN tenancy_tenant t ON t.id = j.tenant_id "
        "WHERE t.slug = 'ops'"
    )
    job_ids = [j for j, _ in jobs]
    assert failures, "the restart did not disturb a single submission: the scenario tested nothing"
    assert len(acked) == len(by_key) == len(job_ids) == len(set(job_ids)), (len(acked), len(by_key), len(job_ids))
    assert all(by_key[k] == j for k, j in acked.items()), "a key's job differs from the one acknowledged"
    assert all(ids == [acked[k]] * len(ids) for k, ids in replays.items()), "a replay returned another job"
    print(
        "scenario:", json.dumps({"scenario": "PostgreSQL restart during job submissions", "clients": CLIENTS,
        "keys": len(acked), "attempts": len(acked) + sum(map(len, failures.values())) + sum(map(len, replays.values())),
        "acked_first_try": len(acked) - len(unacked), "failed_attempts": sum(map(len, failures.values())),
        "retried_keys": len(unacked), "lost": 0, "duplicated": len(job_ids) - len(set(by_key.values())),
        "pg_restart_s": round(pg_down_s, 1), "retries_done_s": round(recover_s, 1),
        "failure_kinds": sorted({f.split(" ")[0] for fs in failures.values() for f in fs})})
    )  # fmt: skip
