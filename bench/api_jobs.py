"""Job submissions per second against the portal on PostgreSQL, with N concurrent clients.

    .venv/bin/python bench/api_jobs.py [--workers 2] [--clients 1,16,64] [--seconds 10] [--tenants 20]

Starts `infermesh portal` on a scratch PostgreSQL database (127.0.0.1:5432), creates tenants and API tokens, then
for each client count submits docs/examples/job.json (each with its own Idempotency-Key) as fast as the clients
can and prints submissions/s and latency percentiles next to the floor of the same stack (GET /healthz, which runs
one SQL query), so the ratio shows what submission itself costs. Ends with
`summary: submissions_per_s=… p99_ms=…` for the headline client count (16 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import psycopg

from agents.binding import free_port

ROOT = Path(__file__).resolve().parents[1]
DB = "infermesh_bench"
DB_URL = f"postgres://postgres@127.0.0.1:5432/{DB}"
JOB = json.loads((ROOT / "docs/examples/job.json").read_text())

SEED = """
import json, sys
from meshweb.tenancy.models import Quota
from meshweb.tenancy.services import SYSTEM, tenant_create, token_create
tokens = []
for i in range(int(sys.argv[1])):
    tenant = tenant_create(principal=SYSTEM, slug=f"bench-{i}")
    Quota.objects.filter(tenant=tenant).update(
        gpus_max=10**9, gpu_hours_per_period=1e12, concurrent_jobs_max=10**9
    )
    tokens.append(token_create(principal=SYSTEM, tenant=tenant, role="member")[1])
print(json.dumps(tokens))
"""


def reset_database() -> None:
    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def load(
    base: str, tokens: list[str], clients: int, seconds: float, submit: bool
) -> tuple[int, int, list[float]]:
    ok = errors = 0
    latencies: list[float] = []
    failures: Counter[int] = Counter()
    deadline = time.perf_counter() + seconds
    body = json.dumps(JOB).encode()
    connector = aiohttp.TCPConnector(limit=clients)

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal ok, errors
        headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}", "Content-Type": "application/json"}
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            if submit:
                headers["Idempotency-Key"] = uuid.uuid4().hex
                resp = await session.post(f"{base}/api/v1/jobs/", data=body, headers=headers)
                expected = 201
            else:
                resp = await session.get(f"{base}/healthz")
                expected = 200
            await resp.read()
            latencies.append((time.perf_counter() - t0) * 1000)
            if resp.status == expected:
                ok += 1
            else:
                errors += 1
                failures[resp.status] += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(i, session) for i in range(clients)))
    if failures:
        print(
            f"  {'submit' if submit else 'healthz'} x{clients}: unexpected statuses {dict(failures)}", file=sys.stderr
        )
    return ok, errors, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="portal worker processes")
    parser.add_argument("--clients", default="1,16,64", help="comma-separated concurrent client counts")
    parser.add_argument("--headline", type=int, default=16, help="client count reported in the summary")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each run")
    parser.add_argument("--tenants", type=int, default=20)
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    if args.headline not in counts:
        parser.error("--headline must be one of --clients")

    reset_database()
    env = {**os.environ, "DATABASE_URL": DB_URL, "LOG_LEVEL": "WARNING", "INFERMESH_DATA_DIR": "/tmp/infermesh-bench"}
    env.pop("REDIS_URL", None)
    py = sys.executable
    subprocess.run([py, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    seed = subprocess.run(
        [py, "manage.py", "shell", "-c", SEED.replace("sys.argv[1]", str(args.tenants))],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    tokens = json.loads(seed.stdout.strip().splitlines()[-1])
    port = free_port()
    log_path = Path(env["INFERMESH_DATA_DIR"]) / "portal.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("w")
    base = f"http://127.0.0.1:{port}"
    portal = subprocess.Popen(
        [
            py,
            "-m",
            "meshweb.cli",
            "portal",
            "--no-migrate",
            "--workers",
            str(args.workers),
            "--bind",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        asyncio.run(load(base, tokens, 8, 2.0, submit=True))  # warm-up: connections, caches, JIT-free paths
        rows = []
        for clients in counts:
            for kind, submit in (("healthz floor", False), ("job submit", True)):
                ok, errors, lat = asyncio.run(load(base, tokens, clients, args.seconds, submit))
                rows.append((kind, clients, ok / args.seconds, errors, percentile(lat, 0.5), percentile(lat, 0.99)))
    finally:
        portal.terminate()
        portal.wait(timeout=20)
        log.close()

    print(f"portal: {args.workers} workers on PostgreSQL; {args.seconds:.0f} s per run; {args.tenants} tenants")
    print(f"{'path':<14} {'clients':>7} {'req/s':>9} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'vs floor':>8}")
    floor = {}
    for kind, clients, rps, errors, p50, p99 in rows:
        if kind == "healthz floor":
            floor[clients] = rps
        ratio = rps / floor[clients] if floor.get(clients) else float("nan")
        print(f"{kind:<14} {clients:>7} {rps:>9.1f} {errors:>6} {p50:>8.1f} {p99:>8.1f} {ratio:>8.2f}")
    head = next(r for r in rows if r[0] == "job submit" and r[1] == args.headline)
    print(
        f"summary: submissions_per_s={head[2]:.1f} p99_ms={head[5]:.1f} p50_ms={head[4]:.1f} "
        f"clients={args.headline} errors={head[3]} ratio_vs_healthz={head[2] / floor[args.headline]:.2f}"
    )
    if any(r[3] for r in rows):
        print(f"errors: see the portal's log at {log_path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
