"""Router overhead: one emulated runtime in --instant mode reached directly, through our router (full path: auth,
quota, strategy, metrics, tracing, access log), through nginx (proxy_pass, keep-alive) and through the Rust
`vllm-router` (--policy round_robin), all in one run.

    .venv/bin/python bench/router_overhead.py [--duration 8] [--concurrency 32] [--workers 2]

Phase 1 drives each path at a fixed concurrency with wrk (closed loop) for requests/s. Phase 2 offers each path the
same open-loop rate, half of our router's phase-1 maximum, and reports p50/p99 latency added over the direct path.
Installs its peers when missing (apt-get install -y nginx wrk; pip install vllm-router into .venv).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VENV_BIN = Path(sys.executable).parent
BODY = {"model": "demo-llm", "prompt": "Say hello to the mesh.", "max_tokens": 16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def ensure_apt(*pkgs: str) -> None:
    missing = [p for p in pkgs if shutil.which(p) is None and not Path(f"/usr/sbin/{p}").exists()]
    if missing:
        print(f"installing {' '.join(missing)} (apt-get)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


def ensure_vllm_router() -> Path:
    exe = VENV_BIN / "vllm-router"
    if not exe.exists():
        print("installing vllm-router (pip)", flush=True)
        # starlette<1 keeps the dev tools' pin intact when vllm-router pulls in fastapi.
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "vllm-router", "starlette<1"],
            check=True,
        )
    return exe


class Procs:
    """Every child this bench starts, stopped in reverse order at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="infermesh-bench-"))

    def start(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, **(env or {})}, cwd=ROOT)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def procs() -> Iterator[Procs]:
    ps = Procs()
    try:
        yield ps
    finally:
        ps.close()


def start_emulator(ps: Procs, name: str, *args: str) -> str:
    port = free_port()
    ps.start([sys.executable, "-m", "agents.emulator", "--port", str(port), *args], name)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health")
    return url


def start_router(ps: Procs, cfg: dict[str, object], name: str = "router") -> str:
    import yaml

    port = free_port()
    cfg = {**cfg, "listen": {**dict(cfg.get("listen") or {}), "host": "127.0.0.1", "port": port}}
    path = ps.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ps.start([sys.executable, "-m", "router", "--config", str(path)], name)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz")
    workers = int(dict(cfg["listen"]).get("workers", 1))  # type: ignore[call-overload]
    if workers > 1:
        time.sleep(2.0)  # /healthz answered from one worker; give the others time to bind the shared port
    return url


def start_nginx(ps: Procs, upstreams: list[str]) -> str:
    port = free_port()
    servers = "\n".join(f"    server {u.removeprefix('http://')};" for u in upstreams)
    conf = f"""
worker_processes 1;
pid {ps.tmp}/nginx.pid;
error_log {ps.tmp}/nginx-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {ps.tmp}/nginx-body;
  proxy_temp_path {ps.tmp}/nginx-proxy;
  fastcgi_temp_path {ps.tmp}/nginx-fcgi;
  uwsgi_temp_path {ps.tmp}/nginx-uwsgi;
  scgi_temp_path {ps.tmp}/nginx-scgi;
  upstream runtimes {{
{servers}
    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://runtimes;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""
    path = ps.tmp / "nginx.conf"
    path.write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    ps.start([nginx, "-c", str(path), "-p", str(ps.tmp)], "nginx")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health")
    return url


def start_vllm_router(ps: Procs, upstreams: list[str], policy: str) -> str:
    exe = ensure_vllm_router()
    port = free_port()
    ps.start(
        [
            str(exe),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--worker-urls", *upstreams,
            "--policy", policy,
            "--prometheus-port", str(free_port()),
            "--log-level", "warning",
            "--request-timeout-secs", "600",
        ],
        f"vllm-router-{policy}",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", timeout=60)
    return url


def router_cfg(targets: list[str], strategy: str = "hybrid_mesh", **policy: object) -> dict[str, object]:
    return {
        "listen": {"grpc_port": None, "max_inflight": 100_000},
        "agent": {"address": None},
        "targets": [{"model": "demo-llm", "url": u, "node": f"n{i}"} for i, u in enumerate(targets)],
        "tenants": [
            {
                "name": "demo",
                "api_keys": ["demo-key"],
                "quotas": {"requests_per_s": 1e6, "burst_requests": 1e6, "tokens_per_min": 1e12, "concurrent": 100000},
            }
        ],
        "default_policy": {"strategy": strategy, "admission": {"max_queue_per_target": 1e9}, **policy},
        "logging": {"level": "INFO", "access_log": True},
    }


# -- load ------------------------------------------------------------------------------------------------------------
_WRK_LUA = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer demo-key"
"""


def _ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        return float("nan")
    x, unit = float(m.group(1)), m.group(2)
    return {"us": x / 1000, "ms": x, "s": x * 1000, "m": x * 60000}[unit]


def wrk(url: str, concurrency: int, duration: float, tmp: Path) -> dict[str, float]:
    script = tmp / "post.lua"
    script.write_text(_WRK_LUA % json.dumps(BODY))
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            url + "/v1/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50_ms": lat.get("50", float("nan")),
        "p99_ms": lat.get("99", float("nan")),
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    i = lower.find(b"content-length:")
    if i >= 0:
        n = int(lower[i + 15 : lower.index(b"\r\n", i)])
        await reader.readexactly(n)
        return status
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return status


async def open_loop(url: str, rate: float, duration: float, connections: int = 64) -> dict[str, float]:
    """Offer a fixed rate regardless of answers over a pool of keep-alive connections, with a client cheap enough
    (pre-built request bytes, no HTTP library) not to steal the CPU the proxies need. Latency counts from the
    scheduled send time, so a request that waits for a free connection is charged for it (no coordinated omission).
    """
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(BODY).encode()
    req = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer demo-key\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    lat: list[float] = []
    errors = 0
    n = int(rate * duration)
    queue: asyncio.Queue[float] = asyncio.Queue()

    async def conn_worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while True:
                due = await queue.get()
                if due < 0:
                    return
                writer.write(req)
                status = await _read_response(reader)
                if status != 200:
                    errors += 1
                lat.append(time.perf_counter() - due)
        finally:
            writer.close()

    workers = [asyncio.ensure_future(conn_worker()) for _ in range(connections)]
    for _ in range(64):  # warm-up
        queue.put_nowait(time.perf_counter())
    while queue.qsize():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    lat.clear()
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(due)
    for _ in workers:
        queue.put_nowait(-1.0)
    await asyncio.gather(*workers)
    lat.sort()
    if not lat:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "errors": float(errors)}
    return {
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "errors": float(errors),
    }


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per path and phase")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="our router's worker processes (vllm-router uses all)")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C so that every started peer is stopped.
    signal.signal(signal.SIGTERM, _exit)
    ensure_apt("nginx", "wrk")
    ensure_vllm_router()
    import uvloop

    with procs() as ps:
        emu = start_emulator(ps, "emulator", "--profile", "h100", "--model", "demo-llm", "--instant")
        paths: dict[str, str] = {"direct": emu}
        cfg = router_cfg([emu])
        cfg["listen"] = {**cfg["listen"], "workers": args.workers}  # type: ignore[dict-item]
        paths["infermesh"] = start_router(ps, cfg)
        paths["nginx"] = start_nginx(ps, [emu])
        paths["vllm-router"] = start_vllm_router(ps, [emu], "round_robin")
        print(f"# {os.cpu_count()} CPUs; every process (load generator included) shares them", flush=True)
        phase1: dict[str, dict[str, float]] = {}
        for name, url in paths.items():
            phase1[name] = wrk(url, args.concurrency, args.duration, ps.tmp)
            print(f"phase 1 {name}: {phase1[name]}", flush=True)
        rate = max(50.0, 0.5 * phase1["infermesh"]["rps"])
        phase2: dict[str, dict[str, float]] = {}
        for name, url in paths.items():
            phase2[name] = uvloop.run(open_loop(url, rate, args.duration))
            print(f"phase 2 {name} @ {rate:.0f} req/s: {phase2[name]}", flush=True)
    d1, d2 = phase1["direct"], phase2["direct"]
    print()
    print(f"fixed concurrency {args.concurrency} (wrk), then open loop at {rate:.0f} req/s (half our max)")
    print(
        f"{'path':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} | {'+p50 ms @½':>11} {'+p99 ms @½':>11} {'errors':>7}"
    )
    for name in paths:
        a, b = phase1[name], phase2[name]
        print(
            f"{name:<12} {a['rps']:>9.0f} {a['p50_ms']:>8.2f} {a['p99_ms']:>8.2f} | "
            f"{b['p50_ms'] - d2['p50_ms']:>11.2f} {b['p99_ms'] - d2['p99_ms']:>11.2f} "
            f"{int(a['non2xx'] + b['errors']):>7}"
        )
    ratio = phase1["infermesh"]["rps"] / phase1["vllm-router"]["rps"]
    added = phase2["infermesh"]["p99_ms"] - d2["p99_ms"]
    print(f"summary: rps_ratio_vs_vllm_router={ratio:.2f} added_p99_ms={added:.2f}")
    _ = d1
    return 0


if __name__ == "__main__":
    sys.exit(main())
