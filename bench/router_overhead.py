"""Router overhead: one emulated runtime in --instant mode reached directly, through our router (full path: auth,
quota, strategy, metrics, tracing, access log), through nginx (proxy_pass, keep-alive) and through the Rust
`vllm-router` (--policy round_robin), all in one run.

    .venv/bin/python bench/router_overhead.py [--duration 8] [--concurrency 32] [--workers 2] [--scaling 1,2]

Phase 1 drives each path at a fixed concurrency with wrk (closed loop) for requests/s, and reads each proxy's CPU time
(user + system, its worker processes included) over the run: CPU microseconds per request. Phase 2 offers each path
the same open-loop rate, half of our router's phase-1 maximum, and reports p50/p99 latency added over the direct path.
Phase 3 sends many-turn chats of 16 KB, 256 KB and 2 MB one at a time (streamed, the last turn new each time) through
the same proxies in front of a sink runtime (it reads the body and answers at once, so the emulator's tokenizer does
not drown the proxies' time) and reports the time to the answer's first byte added over the direct path, and the CPU
per request (from clock ticks of 10 ms: coarse at 2 MB's few requests), per body size.
`--scaling` runs phase 1 again on our router alone with each listed number of workers.
nginx buffers request bodies in memory (client_body_buffer_size 4m), as our router and vllm-router do.
Installs its peers when missing (apt-get install -y nginx wrk; pip install vllm-router into .venv-vllm-router).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from agents.binding import free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VENV_BIN = Path(sys.executable).parent
BODY = {"model": "demo-llm", "prompt": "Say hello to the mesh.", "max_tokens": 16}
# room for the 2 MB chats (about 500k tokens) in the emulated runtime's context and KV cache
_EMU_LONG = ("--max-model-len", "1000000", "--kv-tokens", "4000000")


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


VLLM_ROUTER_VENV = ROOT / ".venv-vllm-router"


def ensure_vllm_router() -> Path:
    """vllm-router in a virtual environment of its own: what it pulls in (fastapi, ...) never changes the project's."""
    exe = VLLM_ROUTER_VENV / "bin" / "vllm-router"
    if not exe.exists():
        print("installing vllm-router (pip, own venv .venv-vllm-router)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(VLLM_ROUTER_VENV)], check=True)
        subprocess.run([sys.executable, "-m", "pip", "--python", str(VLLM_ROUTER_VENV / "bin" / "python"), "install",
                        "-q", "vllm-router"], check=True)  # fmt: skip
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


def start_nginx(ps: Procs, upstreams: list[str], name: str = "nginx") -> str:
    port = free_port()
    servers = "\n".join(f"    server {u.removeprefix('http://')};" for u in upstreams)
    conf = f"""
worker_processes 1;
pid {ps.tmp}/{name}.pid;
error_log {ps.tmp}/{name}-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_max_body_size 16m;
  client_body_buffer_size 4m;
  client_body_temp_path {ps.tmp}/{name}-body;
  proxy_temp_path {ps.tmp}/{name}-proxy;
  fastcgi_temp_path {ps.tmp}/{name}-fcgi;
  uwsgi_temp_path {ps.tmp}/{name}-uwsgi;
  scgi_temp_path {ps.tmp}/{name}-scgi;
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
    path = ps.tmp / f"{name}.conf"
    path.write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    ps.start([nginx, "-c", str(path), "-p", str(ps.tmp)], name)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health")
    return url


def start_vllm_router(ps: Procs, upstreams: list[str], policy: str, name: str = "vllm-router") -> str:
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
        f"{name}-{policy}",
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


# -- CPU time --------------------------------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, user + system seconds) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and every live descendant (a router's worker processes, nginx's worker)."""
    parent: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parent[int(entry)] = _stat(int(entry))
    keep = {pid}
    grew = True
    while grew:
        grew = False
        for p, (pp, _) in parent.items():
            if pp in keep and p not in keep:
                keep.add(p)
                grew = True
    return sum(parent[p][1] for p in keep if p in parent)


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
    )
    if out.returncode != 0:
        raise RuntimeError(f"wrk against {url} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    lat = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)%\s+(\S+)", text, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    return {
        "rps": rps,
        "requests": total,
        "p50_ms": lat.get("50", float("nan")),
        "p99_ms": lat.get("99", float("nan")),
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


async def _read_response(reader: asyncio.StreamReader, first: bytes = b"") -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked), `first` its bytes already read; return its status."""
    head = first + await reader.readuntil(b"\r\n\r\n")
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


# A runtime that costs nothing: it reads the whole request, then answers one SSE event and [DONE] at once, so that
# phase 3 sees the proxies' time on a large body and not the emulator's tokenizer (hundreds of ms at 256 KB).
_SINK = r"""
import asyncio, sys
SSE = (b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
       b"data: [DONE]\n\n")
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
          + f"{len(SSE):x}\r\n".encode() + SSE + b"\r\n0\r\n\r\n")
async def handle(reader, writer):
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            i = head.find(b"content-length:")
            if i >= 0:
                await reader.readexactly(int(head[i + 15 : head.index(b"\r\n", i)]))
            elif b"chunked" in head:
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    await reader.readexactly(size + 2)
                await reader.readuntil(b"\r\n")
            if head.startswith(b"get"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            else:
                writer.write(ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), limit=1 << 22)
    await server.serve_forever()
asyncio.run(main())
"""


def start_sink(ps: Procs) -> str:
    port = free_port()
    ps.start([sys.executable, "-c", _SINK, str(port)], "sink")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health")
    return url


# -- large bodies ----------------------------------------------------------------------------------------------------
SIZES = (("16k", 16 << 10, 150), ("256k", 256 << 10, 50), ("2m", 2 << 20, 12))  # label, bytes, requests per path
_TEXT = (
    "the mesh routes each request to a runtime whose cache already holds its prefix while the scheduler places "
    "training jobs on idle GPUs and the portal meters every token per tenant across zones and nodes"
)
_WORDS = _TEXT.split()


def chat_body(size: int) -> tuple[bytes, bytes]:
    """A many-turn chat of about `size` bytes (turns of about 1 KB), as the bytes before and after the text of its
    new last turn."""
    rnd = random.Random(size)
    msgs: list[dict[str, str]] = []
    total = 0
    while total < size - 200 or len(msgs) % 2:
        text = " ".join(rnd.choice(_WORDS) for _ in range(160))
        msgs.append({"role": "assistant" if len(msgs) % 2 else "user", "content": text})
        total += len(text) + 40
    doc = json.dumps({"model": "demo-llm", "stream": True, "max_tokens": 4, "messages": msgs})
    return doc[:-2].encode() + b', {"role": "user", "content": "turn ', b'"}]}'


async def first_byte_times(url: str, head: bytes, tail: bytes, n: int, pid: int | None) -> dict[str, float]:
    """`n` chats sent one at a time over one keep-alive connection: median and p90 time from the first byte sent to
    the first byte of the answer, and the proxy's CPU per request (None: not measured)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    times: list[float] = []
    cpu0 = 0.0
    try:
        for i in range(n + 3):  # three warm-ups
            if i == 3 and pid is not None:
                cpu0 = cpu_seconds(pid)
            body = head + str(i).encode() + tail
            req = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer demo-key\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            t0 = time.perf_counter()
            writer.writelines((req, body))
            first = await reader.readexactly(1)
            t1 = time.perf_counter()
            status = await _read_response(reader, first)
            if status != 200:
                raise RuntimeError(f"{url} answered {status} to a {len(body)}-byte chat")
            if i >= 3:
                times.append(t1 - t0)
        cpu = (cpu_seconds(pid) - cpu0) / n if pid is not None else float("nan")
    finally:
        writer.close()
    times.sort()
    return {
        "ttft_ms": times[len(times) // 2] * 1000,
        "p90_ms": times[int(len(times) * 0.9)] * 1000,
        "cpu_us": cpu * 1e6,
    }


# -- profile per request phase ---------------------------------------------------------------------------------------
# phase -> (file suffix, function) whose cumulative CPU time (while on the CPU: an awaiting coroutine is not counted)
# is the phase's; the rows overlap where one phase holds another (admit holds rank), as marked.
PHASES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("HTTP in: aiohttp parse + dispatch (all)", "aiohttp/web_protocol.py", ("data_received",)),
    ("handler, whole (all below)", "router/app.py", ("pipeline",)),
    ("  tracing span + extract", "router/obs.py", ("start_as_current_span", "extract")),
    ("  correlation id", "router/service.py", ("new_corr_id",)),
    ("  authenticate", "router/service.py", ("authenticate",)),
    ("  read body", "router/app.py", ("read_body",)),
    ("  parse JSON", "router/openai_api.py", ("parse_json_body", "_partial_object")),  # a large chat: partly
    ("  validate", "router/openai_api.py", ("validate",)),
    ("  prefix hashes + session key", "router/prefix.py", ("request_prefix",)),
    ("  admit (incl. quota and rank)", "router/service.py", ("admit",)),
    ("    quota", "router/quota.py", ("acquire",)),
    ("    rank (strategy)", "router/ranking.py", ("rank",)),
    ("  forward: first byte (incl. upstream)", "router/forward.py", ("open",)),
    ("    upstream headers", "router/app.py", ("upstream_headers",)),
    ("    upstream request write", "router/upstream.py", ("post",)),
    ("    upstream response parse", "router/upstream.py", ("data_received",)),
    ("  relay answer", "router/app.py", ("stream_back",)),
    ("    usage of the answer", "router/app.py", ("_read_usage",)),
    ("  finish: in flight, batch slots, quota", "router/service.py", ("finish",)),
    ("    strategy: request finished", "router/ranking.py", ("finished",)),
    ("response write (aiohttp)", "aiohttp/web_response.py", ("prepare",)),
    ("report, once the answer is out (loop turn's end)", "router/service.py", ("_report_all",)),
    ("  strategy learns (learn, outcome)", "router/ranking.py", ("learn", "outcome")),
    ("  access log line", "router/obs.py", ("access_log",)),
    ("metrics, applied once per loop turn", "router/metrics.py", ("flush",)),
    ("strategy, all (rank + learning)", "router/ranking.py", ("rank", "learn", "finished", "outcome")),
)


_PROFILED = """
import asyncio, cProfile, signal, sys, time
import router.main as rm
prof = cProfile.Profile(time.thread_time_ns, 1e-9)  # CPU time: a loaded machine preempts
serve = rm.serve
def dump():
    prof.disable()
    prof.dump_stats(sys.argv[1])
async def profiled(cfg, stop=None):
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, prof.enable)
    loop.add_signal_handler(signal.SIGUSR2, dump)
    await serve(cfg, stop)
rm.serve = profiled
rm.main(["--config", sys.argv[2]])
"""


def profile_router(
    emu: str, ps: Procs, duration: float, concurrency: int, out: Path, strategy: str, size: str = ""
) -> str:
    """Our router (one worker) under cProfile, switched on after a warm-up for one wrk run only: CPU microseconds
    per request by phase (cProfile's own cost inflates them alike; the shares are what to read)."""

    import yaml

    cfg = router_cfg([emu], strategy)
    port = free_port()
    cfg["listen"] = {**dict(cfg["listen"]), "host": "127.0.0.1", "port": port, "max_body_bytes": 8 << 20}  # type: ignore[call-overload]
    path = ps.tmp / "router-profiled.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = ps.start([sys.executable, "-c", _PROFILED, str(out), str(path)], "router-profiled")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz")
    if size:  # many-turn chats of that size, one at a time (the target is then a sink, see start_sink)
        import uvloop

        nbytes, n = {label: (b, k) for label, b, k in SIZES}[size]
        head, tail = chat_body(nbytes)
        uvloop.run(first_byte_times(url, head, tail, 5, None))
        p.send_signal(signal.SIGUSR1)
        t0 = time.perf_counter()
        uvloop.run(first_byte_times(url, head, tail, n * 2, None))
        r = {"rps": n * 2 / (time.perf_counter() - t0)}
    else:
        wrk(url, concurrency, 2.0, ps.tmp)  # warm-up (imports, pools, caches), not profiled
        p.send_signal(signal.SIGUSR1)
        r = wrk(url, concurrency, duration, ps.tmp)
    p.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    return phase_table(out, f"{r['rps']:.0f} req/s under cProfile")


def phase_table(path: Path, note: str = "") -> str:
    """The per-phase table of a saved profile of our router."""
    import pstats

    raw = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    # requests profiled: calls of authenticate (once per request, a plain function)
    calls = sum(
        nc for (f, _l, fn), (_cc, nc, *_rest) in raw.items() if f.endswith("router/service.py") and fn == "authenticate"
    )
    total = sum(tt for (_cc, _nc, tt, _ct, _c) in raw.values()) / calls * 1e6
    lines = [f"{'phase':<48} {'us/req':>8} {'share':>6}"]
    for label, suffix, func in PHASES:
        cum = sum(ct for (f, _l, fn), (_cc, _nc, _tt, ct, _c) in raw.items() if f.endswith(suffix) and fn in func)
        us = cum / calls * 1e6
        lines.append(f"{label:<48} {us:>8.1f} {us / total:>6.0%}")
    lines.append(f"{'all CPU in the process (profiled)':<48} {total:>8.1f} {1:>6.0%}")
    lines.append("")
    lines.append(f"top functions by own time, us/request ({calls} requests{', ' + note if note else ''})")
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:30]
    for (file, line, func), (_cc, nc, tt, _ct, _c) in rows:
        where = "/".join(Path(file).parts[-2:]) if file != "~" else "builtin"
        lines.append(f"  {tt / calls * 1e6:>7.1f}  {nc / calls:>5.1f}x  {where}:{line} {func}")
    return "\n".join(lines)


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per path and phase")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="our router's worker processes (vllm-router uses all)")
    ap.add_argument("--scaling", default="", help="comma-separated worker counts for our router's phase 1 alone")
    ap.add_argument("--sizes", default="16k,256k,2m", help="body sizes of phase 3 (of 16k, 256k, 2m; '' for none)")
    ap.add_argument("--strategy", default="hybrid_mesh", help="our router's routing strategy (default: hybrid_mesh)")
    ap.add_argument("--profile", action="store_true", help="only profile our router (one worker) per request phase")
    ap.add_argument("--profile-save", type=Path, help="with --profile: keep the raw cProfile stats in this file")
    ap.add_argument("--profile-size", default="", help="with --profile: chats of this size (16k, 256k, 2m)")
    ap.add_argument("--profile-table", type=Path, help="print the phase table of stats kept by --profile-save")
    args = ap.parse_args()
    try:
        scaling = [int(x) for x in args.scaling.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--scaling must list worker counts like 1,2 (got {args.scaling!r})")
    known = {label for label, _, _ in SIZES}
    sizes = [x.strip() for x in args.sizes.split(",") if x.strip()]
    if not set(sizes) <= known:
        ap.error(f"--sizes must be among {', '.join(sorted(known))} (got {args.sizes!r})")
    if args.profile_table:
        print(phase_table(args.profile_table))
        return 0
    # SIGTERM unwinds like Ctrl-C so that every started peer is stopped.
    signal.signal(signal.SIGTERM, _exit)
    ensure_apt("nginx", "wrk")
    if args.profile:
        with procs() as ps:
            if args.profile_size:
                emu = start_sink(ps)
            else:
                emu = start_emulator(ps, "emulator", "--profile", "h100", "--model", "demo-llm", "--instant")
            table = profile_router(
                emu, ps, args.duration, args.concurrency, ps.tmp / "router.prof", args.strategy, args.profile_size
            )
            if args.profile_save:
                shutil.copy(ps.tmp / "router.prof", args.profile_save)
        print(f"# load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(table)
        return 0
    ensure_vllm_router()
    import uvloop

    with procs() as ps:
        emu = start_emulator(ps, "emulator", "--profile", "h100", "--model", "demo-llm", "--instant", *_EMU_LONG)
        paths: dict[str, str] = {"direct": emu}
        pids: dict[str, int | None] = {"direct": None}
        cfg = router_cfg([emu], args.strategy)
        cfg["listen"] = {**cfg["listen"], "workers": args.workers, "max_body_bytes": 8 << 20}  # type: ignore[dict-item]
        paths["infermesh"] = start_router(ps, cfg)
        pids["infermesh"] = ps.procs[-1].pid
        paths["nginx"] = start_nginx(ps, [emu])
        pids["nginx"] = ps.procs[-1].pid
        paths["vllm-router"] = start_vllm_router(ps, [emu], "round_robin")
        pids["vllm-router"] = ps.procs[-1].pid
        print(f"# {os.cpu_count()} CPUs; every process (load generator included) shares them", flush=True)
        print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        phase1: dict[str, dict[str, float]] = {}
        for name, url in paths.items():
            pid = pids[name]
            cpu0 = cpu_seconds(pid) if pid is not None else 0.0
            phase1[name] = wrk(url, args.concurrency, args.duration, ps.tmp)
            cpu = (cpu_seconds(pid) - cpu0) if pid is not None else float("nan")
            phase1[name]["cpu_us"] = cpu / max(1.0, phase1[name]["requests"]) * 1e6
            print(f"phase 1 {name}: {phase1[name]}", flush=True)
        rate = max(50.0, 0.5 * phase1["infermesh"]["rps"])
        phase2: dict[str, dict[str, float]] = {}
        for name, url in paths.items():
            phase2[name] = uvloop.run(open_loop(url, rate, args.duration))
            print(f"phase 2 {name} @ {rate:.0f} req/s: {phase2[name]}", flush=True)
        phase3: dict[str, dict[str, dict[str, float]]] = {}
        big: dict[str, str] = {}
        if sizes:  # the same proxies in front of the sink
            big["direct"] = start_sink(ps)
            pids["direct"] = None
            sink_cfg = router_cfg([big["direct"]], args.strategy)
            sink_cfg["listen"] = {**cfg["listen"]}  # type: ignore[dict-item]
            big["infermesh"] = start_router(ps, sink_cfg, name="router-sink")
            pids["infermesh"] = ps.procs[-1].pid
            big["nginx"] = start_nginx(ps, [big["direct"]], name="nginx-sink")
            pids["nginx"] = ps.procs[-1].pid
            big["vllm-router"] = start_vllm_router(ps, [big["direct"]], "round_robin", name="vllm-router-sink")
            pids["vllm-router"] = ps.procs[-1].pid
        for label, size, n in SIZES:
            if label not in sizes:
                continue
            head, tail = chat_body(size)
            phase3[label] = {}
            for name, url in big.items():
                phase3[label][name] = uvloop.run(first_byte_times(url, head, tail, n, pids[name]))
                print(f"phase 3 {label} {name}: {phase3[label][name]}", flush=True)
        scaled: dict[int, dict[str, float]] = {}
        for workers in scaling:
            scfg = router_cfg([emu], args.strategy)
            scfg["listen"] = {**scfg["listen"], "workers": workers}  # type: ignore[dict-item]
            url = start_router(ps, scfg, name=f"router-{workers}w")
            pid = ps.procs[-1].pid
            cpu0 = cpu_seconds(pid)
            scaled[workers] = wrk(url, args.concurrency, args.duration, ps.tmp)
            scaled[workers]["cpu_us"] = (cpu_seconds(pid) - cpu0) / max(1.0, scaled[workers]["requests"]) * 1e6
            print(f"scaling {workers} worker(s): {scaled[workers]}", flush=True)
            ps.procs.pop().send_signal(signal.SIGTERM)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    d2 = phase2["direct"]
    print()
    print(f"fixed concurrency {args.concurrency} (wrk), then open loop at {rate:.0f} req/s (half our max)")
    print(
        f"{'path':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} | "
        f"{'+p50 ms @½':>11} {'+p99 ms @½':>11} {'errors':>7}"
    )
    for name in paths:
        a, b = phase1[name], phase2[name]
        cpu_col = f"{a['cpu_us']:>11.0f}" if name != "direct" else f"{'-':>11}"
        print(
            f"{name:<12} {a['rps']:>9.0f} {a['p50_ms']:>8.2f} {a['p99_ms']:>8.2f} {cpu_col} | "
            f"{b['p50_ms'] - d2['p50_ms']:>11.2f} {b['p99_ms'] - d2['p99_ms']:>11.2f} "
            f"{int(a['non2xx'] + b['errors']):>7}"
        )
    if phase3:
        print()
        print("many-turn chats one at a time: time to the answer's first byte (median), added over direct")
        print(f"{'body':<6} {'path':<12} {'TTFT ms':>8} {'p90 ms':>8} {'+TTFT ms':>9} {'CPU us/req':>11}")
        for label, rows in phase3.items():
            for name, r in rows.items():
                added = r["ttft_ms"] - rows["direct"]["ttft_ms"]
                cpu_col = f"{r['cpu_us']:>11.0f}" if name != "direct" else f"{'-':>11}"
                print(f"{label:<6} {name:<12} {r['ttft_ms']:>8.2f} {r['p90_ms']:>8.2f} {added:>9.2f} {cpu_col}")
    if scaled:
        print()
        print(f"our router alone, fixed concurrency {args.concurrency}, by worker count")
        print(f"{'workers':>7} {'req/s':>9} {'p99 ms':>8} {'CPU us/req':>11}")
        for workers, r in scaled.items():
            print(f"{workers:>7} {r['rps']:>9.0f} {r['p99_ms']:>8.2f} {r['cpu_us']:>11.0f}")
    print(f"# load average after: {load}")
    ratio = phase1["infermesh"]["rps"] / phase1["vllm-router"]["rps"]
    added = phase2["infermesh"]["p99_ms"] - d2["p99_ms"]
    extra = ""
    if "256k" in phase3:
        rows = phase3["256k"]
        ours = rows["infermesh"]["ttft_ms"] - rows["direct"]["ttft_ms"]
        theirs = rows["nginx"]["ttft_ms"] - rows["direct"]["ttft_ms"]
        # nginx's added time can be within noise of zero: the ratio's denominator is at least 0.05 ms
        extra = f" added_ttft_ms_256k={ours:.2f} added_ttft_ratio_vs_nginx_256k={ours / max(theirs, 0.05):.2f}"
    print(
        f"summary: rps_ratio_vs_vllm_router={ratio:.2f} added_p99_ms={added:.2f}{extra} "
        f"cpu_us_per_req={phase1['infermesh']['cpu_us']:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
