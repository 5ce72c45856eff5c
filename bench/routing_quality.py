"""Routing quality: replay Azure LLM traces (conversation, code) against a mixed fleet of emulated runtimes through
our router (baseline_rr, least_queue, hybrid_mesh, hybrid_mesh + hedging; fed by a real agent) and through the Rust
`vllm-router` (round_robin, power_of_two), at several loads, over several seeds (slices of the trace).

    .venv/bin/python bench/routing_quality.py [--duration 40] [--loads 0.7,0.9,1.0] [--seeds 3] [--traces conv,code]
        [--max-num-seqs 4] [--straggler 4] [--straggler-load 0.9]
        [--configs baseline_rr,least_queue,hybrid_mesh,hybrid_mesh+hedging,vllm:round_robin,vllm:power_of_two]

Arrival times are the trace's real ones, time-compressed to the target load; prompt and output token counts are the
trace's (sent as the emulator's `prompt_tokens` extension and `max_tokens`). Seed i replays the slice starting at
request i x 1,000 of the trace, the same slice for every configuration, with the configurations interleaved so that
a change in the machine's load touches them alike. Streams SSE and measures TTFT (first byte) and end-to-end latency
per request. A last pass slows one H100 down (--straggler, a throttled GPU) and replays --straggler-load through
hybrid_mesh with and without hedging, on every seed of the first trace: the hedge figures of the summary come from it.
A `+nohold` suffix on one of our configurations (e.g. `hybrid_mesh+nohold`) turns the router's hold-at-router queue
off: requests go to the runtimes at once and queue there, as through vllm-router.

Capacity (`--capacity model`, the default) is modelled, not timed: each seed's slice of 1,000 requests (their own
lengths, in trace order) served by the emulators' own engines in virtual time with every batch slot busy
(`model_trace_capacity`); the same slice always gives the same figure, and the loads are fractions of it. The
emulated runtimes keep a virtual clock (event-loop lag up to 50 ms a step is absorbed), so on a loaded box they still
serve at the modelled rate. `--capacity probe` instead times the trace's slice closed-loop through our router
(`--calibrate-via`, least_queue's) at 8, 16, 24 and (slots + runtimes) clients and takes the best rate; it measured
4.7 and 8.1 req/s for the same fleet minutes apart, because it measured our router's holding (learned batch slots
stuck low, healthy L40S and MIG slices called stragglers) as much as the fleet, and it prints how busy it kept each
runtime. The agent runs an emulated GPU of each runtime's kind under it, so targets carry their GPU family and MIG
slice. Every run is checked for falling behind (the requests waiting for a first byte grew over the last 3/4 of
the arrivals by more than 5% of them, or ended above twice their median): a seed where every configuration fell
behind is an overload of the fleet, left out of the summary's ratios, since its p99s are the backlog at the end of
the arrivals, not routing; where another configuration kept up, falling behind is a router's doing and counts.
A 25 s slice of a bursty trace can be over 100% in its last 3/4 at a nominal 90% ("offer" in the table).
`--decisions DIR` keeps each run's per-request records and our routers' access logs (the target of each
x-request-id) for a look at the tail.

p99 over n requests rests on its n/100 worst ones. `--requests 600` sets n per run, the duration following from the
offered rate (the emulators have no faster clock: at ~3 req/s that is ~3.5 minutes a run); the full matrix (2 traces
x 3 loads x 3 seeds x 6 configurations + the straggler pass) then takes hours; pick --loads, --traces and --configs
to fit. Each table row gives the mean over seeds with the seeds' min-max.

Summary (first trace, at 90% load, or the load nearest it): p99_ttft_ratio_vs_best_peer_90 = hybrid_mesh's p99 TTFT
over the best vllm-router policy's, and p99_ttft_ratio_vs_least_queue_90 over least_queue's, each the WORST seed (the
aims hold on every seed); hedge_p99_ttft_ratio_straggler = p99 TTFT with hedging over without, straggler in the fleet
(mean over seeds); hedge_extra_load = hedges fired per request there.
Traces: Azure LLM inference trace 2023 (Azure/AzurePublicDataset), Patel et al., ISCA 2024 "Splitwise", CC-BY 4.0.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import router_overhead as ro

from agents.emulator.profiles import get_profile

TRACES = {
    name: ro.ROOT / "meshweb" / "data" / "traces" / f"azure_llm_2023_{name}.csv"  # their first 5,000 requests
    for name in ("conv", "code")
}
FLEET = ["h100", "h100", "a100", "a100", "l40s", "l40s", "h100-mig-3g.40gb", "a100-mig-3g.40gb"]


@dataclass(slots=True)
class Req:
    at: float  # seconds after the start of the replay
    ctx: int
    gen: int


def load_trace(path: Path) -> list[tuple[float, int, int]]:
    rows = []
    with path.open() as f:
        for r in csv.DictReader(f):
            ts = datetime.fromisoformat(r["TIMESTAMP"][:26]).timestamp()
            rows.append((ts, int(r["ContextTokens"]), int(r["GeneratedTokens"])))
    rows.sort()
    return rows


def capacity_rps(profile_name: str, batch: int, ctx: float, gen: float) -> float:
    """Requests/s one runtime sustains at full batch for the trace's mean request (prefill serialised, then decode)."""
    p = get_profile(profile_name)
    step = p.decode_step_s(batch, int(batch * (ctx + gen / 2)))
    per_batch = batch * (ctx / p.prefill_tok_s + p.ttft_fixed_s) + gen * step
    return batch / per_batch


def model_trace_capacity(reqs: Sequence[Req], profiles: Sequence[str], slots: int) -> tuple[float, int]:
    """Requests/s the fleet's modelled engines serve of `reqs` (their own lengths, in order) with every batch slot
    kept busy: the emulator's own scheduling core (`EngineCore`, the runtimes' profiles, `slots` sequences each)
    stepped in virtual time, a request handed to the first runtime with a free slot as soon as one frees. The rate
    is counted between the 10% and the 80% completion (the pipeline full, the queue not yet drained), and returned
    with the number of completions it rests on. No wall clock, no router and no load of the machine enter it: the
    same slice always gives the same figure, and it is what the emulated runtimes serve when nothing else slows them
    (their driver keeps a virtual clock that absorbs event-loop lag up to 50 ms a step)."""
    import heapq

    from agents.emulator.engine import EngineConfig, EngineCore
    from agents.emulator.engine import Sequence as Seq

    engines = [EngineCore(EngineConfig(get_profile(p), max_num_seqs=slots)) for p in profiles]
    heap: list[tuple[float, int, int, Any]] = []
    busy = [False] * len(engines)
    done: list[float] = []
    nxt = tick = 0

    def fill(now: float) -> None:
        nonlocal nxt, tick
        for i, e in enumerate(engines):
            while len(e.running) + len(e.waiting) < slots and nxt < len(reqs):
                r = reqs[nxt]
                nxt += 1
                e.add(Seq(f"r{nxt}", r.ctx, r.gen, r.gen, now))
            if not busy[i]:
                step = e.schedule(now)
                busy[i] = step is not None
                if step is not None:
                    tick += 1
                    heapq.heappush(heap, (now + step.duration_s, tick, i, step))

    fill(0.0)
    while heap:
        now, _, i, step = heapq.heappop(heap)
        done.extend(now for ev in engines[i].complete(step, now) if ev.finished)
        busy[i] = False
        fill(now)
    a, b = len(done) // 10, (8 * len(done)) // 10
    if b - a < 20 or done[b] <= done[a]:
        raise ValueError(f"too few requests ({len(reqs)}) to model the fleet's capacity")
    return (b - a) / (done[b] - done[a]), b - a


async def measure_capacity(emus: list[str], batch: int, ctx: int, gen: int, seconds: float) -> float:
    """Completed requests/s when every runtime is kept exactly full (`batch` closed-loop clients each), directly.

    The timing model's estimate assumes an idle host; on a shared 2-core box the emulators run slower, so the
    loads are fractions of what this machine actually sustains.
    """
    import aiohttp

    done = 0
    body = json.dumps({"model": "demo-llm", "prompt": "x", "prompt_tokens": ctx, "max_tokens": gen}).encode()
    stop = time.perf_counter() + seconds
    partial = 0.0

    async def worker(s: aiohttp.ClientSession, url: str) -> None:
        nonlocal done, partial
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            async with s.post(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
            if time.perf_counter() <= stop:
                done += 1
            else:  # count the share of the last request that fell inside the window
                partial += max(0.0, stop - t0) / (time.perf_counter() - t0)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await asyncio.gather(*(worker(s, u) for u in emus for _ in range(batch)))
    return (done + partial) / seconds


async def measure_trace_capacity(
    url: str, reqs: list[Req], model: str, clients: int, warmup_s: float, seconds: float, emus: Sequence[str] = ()
) -> tuple[float, int, list[float]]:
    """Served requests/s of the trace's own requests (their real, heavy-tailed prompt and output lengths, in trace
    order) sent closed-loop by `clients` clients through the router at `url` (the path the measured runs take, so its
    CPU and the emulators' on this box count): completions in [warmup_s, warmup_s + seconds] over `seconds` (a
    steady-state completion rate: the clients are cancelled at the end, unfinished requests count nothing). Also
    the number of completions counted, and each runtime in `emus` its mean running sequences over the window
    (sampled every 0.5 s: how busy the router kept its slots)."""
    import aiohttp

    headers = {"Authorization": "Bearer demo-key", "Content-Type": "application/json"}
    start = time.perf_counter()
    lo, hi = start + warmup_s, start + warmup_s + seconds
    done, nxt = 0, 0

    async def worker(s: aiohttp.ClientSession) -> None:
        nonlocal done, nxt
        while True:
            r = reqs[nxt % len(reqs)]
            nxt += 1
            body = json.dumps(
                {"model": model, "prompt": "x", "prompt_tokens": r.ctx, "max_tokens": r.gen, "stream": True}
            ).encode()
            try:
                async with s.post(url + "/v1/completions", data=body, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok and lo <= time.perf_counter() <= hi:
                done += 1

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
        tasks = [asyncio.ensure_future(worker(s)) for _ in range(clients)]
        await asyncio.sleep(max(0.0, lo - time.perf_counter()))
        occ = [0.0] * len(emus)
        samples = 0
        while time.perf_counter() < hi - 0.5:
            for i, u in enumerate(emus):
                async with s.get(u + "/emulator/stats") as resp:
                    occ[i] += float((await resp.json())["running"])
            samples += 1
            await asyncio.sleep(0.5)
        await asyncio.sleep(max(0.0, hi - time.perf_counter()))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return done / seconds, done, [o / max(1, samples) for o in occ]


def schedule(
    rows: list[tuple[float, int, int]], rate: float, duration: float, max_len: int, seed: int = 0
) -> list[Req]:
    """The slice of the trace from request `seed` x 1,000 whose compressed arrivals fill `duration` at `rate`
    requests/s on average (wrapping to the start when the trace is too short)."""
    n = max(10, int(rate * duration))
    first = (seed * 1000) % max(1, len(rows) - n - 1)
    sl = rows[first : first + n + 1]
    span = sl[-1][0] - sl[0][0]
    scale = (n / rate) / span if span > 0 else 1.0
    t0 = sl[0][0]
    return [Req((ts - t0) * scale, min(ctx, max_len - gen - 8), max(1, gen)) for ts, ctx, gen in sl[:n]]


@dataclass(slots=True)
class Result:
    ok: bool
    ttft: float
    e2e: float
    at: float = 0.0  # when it was sent, seconds after the start of the replay
    rid: str = ""  # its x-request-id (the router's access log names it as corr_id)
    ctx: int = 0
    gen: int = 0


def load_check(results: list[Result]) -> dict[str, float]:
    """Was the fleet keeping up? Over the last 3/4 of the arrivals (the first quarter fills the pipeline): `offered`
    = arrivals/s, `served` = completions/s in the same window, `backlog` = requests sent and still without their
    first byte when the last one is sent. Arrivals in the window = completions + the growth of the requests in
    service + the growth of the backlog; the first two differ by the requests in service filling up (in a 25 s run
    with 10 s answers the pipeline is not full after the first quarter, so completions lag arrivals though nothing
    queues), so the queue's growth is judged directly: a run whose backlog grew over the window by more than 5% of
    its arrivals (and more than 4), or ends above twice its median over the window (and above 16, half the fleet's
    batch slots), is an overload: its p99 measures the queue built up by the end of the run, not routing, and the
    table marks it. `grown` is that growth."""
    if not results:
        return {"offered": 0.0, "served": 0.0, "grown": 0.0, "backlog": 0.0, "overloaded": 0.0}
    span = max(r.at for r in results)
    lo = 0.25 * span
    width = max(1e-9, span - lo)
    arrivals = sum(1 for r in results if lo <= r.at <= span)
    served = sum(1 for r in results if r.ok and lo <= r.at + r.e2e <= span) / width

    def backlog(t: float) -> int:
        return sum(1 for r in results if r.at <= t < r.at + (r.ttft if r.ttft > 0 else r.e2e))

    grid = sorted(backlog(lo + width * k / 40) for k in range(41))
    end, median = backlog(span), grid[len(grid) // 2]
    grown = end - backlog(lo)
    over = grown > max(4, 0.05 * arrivals) or end > max(16, 2 * median)
    return {"offered": arrivals / width, "served": served, "grown": float(grown), "backlog": float(end),
            "overloaded": float(over)}  # fmt: skip


async def open_loop(reqs: Sequence[Any], one: Callable[[Any], Awaitable[None]]) -> float:
    """Send each request at its `at` (seconds from the start) whatever the answers so far; the wall time of all."""
    start = time.perf_counter()
    tasks = []
    for r in reqs:
        delay = start + r.at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(r)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - start


async def replay(url: str, reqs: list[Req], model: str) -> tuple[list[Result], float]:
    import aiohttp

    results: list[Result] = []
    headers = {"Authorization": "Bearer demo-key", "Content-Type": "application/json"}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:

        async def one(r: Req) -> None:
            body = json.dumps(
                {"model": model, "prompt": "x", "prompt_tokens": r.ctx, "max_tokens": r.gen, "stream": True}
            ).encode()
            rid = f"rq-{r.at:.4f}-{r.ctx}-{r.gen}"
            t0 = time.perf_counter()
            ttft = 0.0
            try:
                async with s.post(url + "/v1/completions", data=body, headers={**headers, "x-request-id": rid}) as resp:
                    if resp.status != 200:
                        await resp.read()
                        results.append(Result(False, 0.0, time.perf_counter() - t0, r.at, rid, r.ctx, r.gen))
                        return
                    tail = b""
                    async for chunk in resp.content.iter_any():
                        if not ttft:
                            ttft = time.perf_counter() - t0
                        tail = (tail + chunk)[-64:]
                    ok = tail.endswith(b"[DONE]\n\n")
                    results.append(Result(ok, ttft, time.perf_counter() - t0, r.at, rid, r.ctx, r.gen))
            except aiohttp.ClientError:
                results.append(Result(False, ttft, time.perf_counter() - t0, r.at, rid, r.ctx, r.gen))

        wall = await open_loop(reqs, one)
    return results, wall


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def wait_idle(emus: list[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = 0
        for u in emus:
            st = httpx.get(u + "/emulator/stats", timeout=5).json()
            busy += int(st.get("running", 0)) + int(st.get("waiting", 0))
        if busy == 0:
            return
        time.sleep(0.5)


def metric_sum(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_agent(ps: ro.Procs, emus: list[str]) -> str:
    """The agent, with an emulated GPU of the runtime's kind under each runtime (a MIG slice as such), so that the
    targets carry their GPU family and slice as on a real node (the router's straggler rule compares a target with
    its own kind; without a family every target is compared with the whole fleet)."""
    import yaml

    from agents.signals.gpu import make_gpu_source

    specs = [p.replace("-mig-", ":mig-") for p in FLEET]
    node = "bench-node"
    gpus = make_gpu_source("emulated", profiles=specs, seed=0, node=node)
    runtimes: list[dict[str, object]] = []
    for i, (u, d) in enumerate(zip(emus, gpus.devices, strict=True)):
        rt: dict[str, object] = {"url": u, "flavor": "vllm", "gpus": [d.uuid if d.mig else i]}
        if d.mig:
            rt["mig_profile"] = d.mig
        runtimes.append(rt)
    grpc_port, http_port = ro.free_port(), ro.free_port()
    cfg = {
        "node": {"id": node, "roles": ["router", "gpu"]},
        "listen": {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"},
        "gpu": {"source": "emulated", "options": {"profiles": specs, "seed": 0, "node": node}},
        "runtimes": runtimes,
        "scrape": {"interval_s": 0.5, "timeout_s": 0.4},
        "log": {"level": "warning"},
    }
    path = ps.tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ps.start(
        [sys.executable, "-c", "import sys; from meshweb.cli import main; sys.exit(main())", "agent", "--config",
         str(path)],
        "agent",
    )  # fmt: skip
    ro.wait_http(f"http://127.0.0.1:{http_port}/healthz")
    return f"127.0.0.1:{grpc_port}"


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def spread(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "nan"
    mean = sum(xs) / len(xs)
    return f"{mean:.3f}" if len(xs) == 1 else f"{mean:.3f} [{min(xs):.3f}-{max(xs):.3f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=40.0, help="seconds of compressed trace per run")
    ap.add_argument(
        "--requests",
        type=int,
        default=0,
        help="requests per run (each p99 rests on its n/100 slowest); the run's duration follows from the offered "
        "rate, and --duration is ignored. 0: --duration decides",
    )
    ap.add_argument("--loads", default="0.7,0.9,1.0", help="fractions of the measured fleet capacity")
    ap.add_argument("--seeds", type=int, default=3, help="trace slices per (trace, load, configuration)")
    ap.add_argument("--traces", default="conv", help="comma list of: " + ", ".join(TRACES))
    ap.add_argument("--max-num-seqs", type=int, default=4, help="batch slots per emulated runtime")
    ap.add_argument(
        "--straggler",
        type=float,
        default=4.0,
        help="after the healthy runs, slow one h100 down by this factor (a throttled GPU) and replay --straggler-load "
        "through hybrid_mesh with and without hedging on every seed of the first trace; 0 skips that pass",
    )
    ap.add_argument("--straggler-load", type=float, default=0.9)
    ap.add_argument(
        "--hedging-straggler-only",
        action="store_true",
        help="run the +hedging configurations in the straggler pass only (hedging is judged there)",
    )
    ap.add_argument(
        "--capacity",
        choices=("model", "probe"),
        default="model",
        help="what the loads are fractions of: model = each seed's slice served by the emulators' own engines in "
        "virtual time with every slot busy (deterministic); probe = the wall-clock closed-loop measurement through "
        "our router (--calibrate-*; it has measured 4.7 and 8.1 req/s for the same fleet minutes apart)",
    )
    ap.add_argument(
        "--calibrate-s",
        type=float,
        default=20.0,
        help="seconds of each capacity measurement: the trace's own requests sent closed-loop through our router, "
        "completions counted after --calibrate-warmup-s",
    )
    ap.add_argument("--calibrate-warmup-s", type=float, default=10.0, help="seconds before completions count")
    ap.add_argument(
        "--calibrate-clients",
        default="8,16,24,0",
        help="closed-loop client counts of the capacity measurement, the best served rate of them taken (0: every "
        "batch slot of the fleet plus one waiting request per runtime): one count alone has measured 2-6 req/s on "
        "this box from one run to the next",
    )
    ap.add_argument(
        "--calibrate-via",
        default="",
        help="configuration whose router carries the capacity measurement (default: least_queue if run, else the "
        "first of ours)",
    )
    ap.add_argument(
        "--decisions",
        default="",
        metavar="DIR",
        help="keep per-request records here: each run's client view (send time, lengths, TTFT, end-to-end; "
        "<trace>_<config>_<load>_<seed>.jsonl) and our routers' access logs (target chosen per x-request-id)",
    )
    ap.add_argument(
        "--recalibrate-s",
        type=float,
        default=0.0,
        help="seconds of a new capacity measurement before each seed (a shared machine's capacity drifts with its "
        "load, and a load fraction of a stale capacity can be an overload); 0 keeps the first measurement",
    )
    ap.add_argument("--configs", default="baseline_rr,least_queue,hybrid_mesh,hybrid_mesh+hedging,vllm:round_robin,"
                    "vllm:power_of_two")  # fmt: skip
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C so that every started peer is stopped.
    signal.signal(signal.SIGTERM, _exit)
    loads = [float(x) for x in args.loads.split(",")]
    configs = args.configs.split(",")
    traces = args.traces.split(",")
    unknown = [t for t in traces if t not in TRACES]
    if unknown:
        ap.error(f"--traces: unknown trace {unknown[0]!r} (known: {', '.join(TRACES)})")
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    our_configs = [c for c in configs if not c.startswith("vllm:")]
    via = args.calibrate_via or ("least_queue" if "least_queue" in our_configs else (our_configs or [""])[0])
    if via not in our_configs:
        ap.error(f"--calibrate-via: {via!r} is not one of this run's configurations of our router ({our_configs})")
    try:
        levels = [int(x) or (args.max_num_seqs + 1) * len(FLEET) for x in args.calibrate_clients.split(",")]
    except ValueError:
        ap.error(f"--calibrate-clients: expected a comma list of integers, got {args.calibrate_clients!r}")
    if any(n < 1 for n in levels):
        ap.error("--calibrate-clients: every count must be at least 1 (0 picks the fleet's slots + runtimes)")
    decisions = Path(args.decisions) if args.decisions else None
    if decisions:
        decisions.mkdir(parents=True, exist_ok=True)
    if any(c.startswith("vllm:") for c in configs):
        ro.ensure_vllm_router()
    t_start = time.perf_counter()
    print(f"# load average at start: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    # (trace, config + label, load) -> one row per seed
    table: dict[tuple[str, str, float], list[dict[str, float]]] = {}
    with ro.procs() as ps:
        emus = [
            ro.start_emulator(
                ps, f"emu{i}", "--profile", p, "--model", "demo-llm", "--seed", str(i),
                "--max-num-seqs", str(args.max_num_seqs), "--max-model-len", "16384",
            )
            for i, p in enumerate(FLEET)
        ]  # fmt: skip
        import uvloop

        agent = start_agent(ps, emus)
        routers: dict[str, str] = {}
        for c in configs:
            if c.startswith("vllm:"):
                routers[c] = ro.start_vllm_router(ps, emus, c.split(":", 1)[1])
                continue
            strategy = c.split("+")[0]
            policy: dict[str, object] = {"first_byte_timeout_s": 300, "deadline_s": 600}
            if c.endswith("+hedging"):
                policy["hedging"] = {"enabled": True, "quantile": 0.95, "budget_ratio": 0.05, "budget_burst": 1}
            if "+nohold" in c:  # sent at once, the runtimes queue (as vllm-router does)
                policy["hold_when_full"] = False
            cfg = ro.router_cfg([], strategy, **policy)
            cfg["agent"] = {"address": agent}
            cfg["logging"] = {"level": "INFO" if decisions else "WARNING", "access_log": bool(decisions)}
            cfg["listen"] = {"grpc_port": None, "max_inflight": 100_000}
            routers[c] = ro.start_router(ps, cfg, name=c.replace("+", "_"))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if httpx.get(routers[c] + "/healthz").json()["targets"]["agent"] == len(FLEET):
                    break
                time.sleep(0.2)

        def run(trace: str, rows: list[tuple[float, int, int]], cap: float, c: str, load: float, seed: int,
                label: str) -> None:  # fmt: skip
            url = routers[c]
            rate = load * cap
            reqs = schedule(rows, rate, args.requests / rate if args.requests else args.duration, 16384, seed)
            wait_idle(emus)
            h0 = metric_sum(url, "infermesh_router_hedges_total", result="fired") if "vllm" not in c else 0.0
            results, wall = uvloop.run(replay(url, reqs, "demo-llm"))
            ok = [r for r in results if r.ok]
            if decisions:
                name = f"{trace}_{(c + label).replace(':', '-').replace('+', '_').replace(' ', '')}_{load:g}_{seed}"
                with (decisions / f"{name}.jsonl").open("w") as f:
                    for r in results:
                        f.write(
                            json.dumps(
                                {
                                    "rid": r.rid,
                                    "at": round(r.at, 4),
                                    "ctx": r.ctx,
                                    "gen": r.gen,
                                    "ok": r.ok,
                                    "ttft": round(r.ttft, 4),
                                    "e2e": round(r.e2e, 4),
                                }
                            )
                            + "\n"
                        )
            hedges = metric_sum(url, "infermesh_router_hedges_total", result="fired") - h0 if "vllm" not in c else 0
            row = {
                "n": len(results),
                "ok": len(ok),
                "ttft_p50": pct([r.ttft for r in ok], 0.5),
                "ttft_p99": pct([r.ttft for r in ok], 0.99),
                "e2e_p50": pct([r.e2e for r in ok], 0.5),
                "e2e_p99": pct([r.e2e for r in ok], 0.99),
                "tput": len(ok) / wall,
                "hedge": hedges / max(1, len(results)),
                **load_check(results),
            }
            table.setdefault((trace, c + label, load), []).append(row)
            shown = json.dumps({k: round(v, 3) for k, v in row.items()})
            print(f"{trace} seed {seed} {c + label} @ {load:.0%}: {shown} load avg {os.getloadavg()[0]:.1f}",
                  flush=True)  # fmt: skip

        caps: dict[tuple[str, int], float] = {}

        def own_capacity(rows: list[tuple[float, int, int]], seed: int, load: float, cap: float) -> float:
            """The modelled capacity of the requests a run at `load` replays (the first n of the seed's slice: a
            25 s run's requests can be 20% lighter or heavier than the slice's 1,000), n following from it."""
            if args.capacity != "model":
                return cap
            sl = schedule(rows, 1.0, 1000.0, 16384, seed)
            for _ in range(3):
                n = args.requests or max(10, int(load * cap * args.duration))
                if n < 100 or n > len(sl):
                    break  # too few to model (or more than the slice): the slice's figure
                cap = model_trace_capacity(sl[:n], FLEET, args.max_num_seqs)[0]
                if args.requests:
                    break
            return cap

        def trace_capacity(rows: list[tuple[float, int, int]], seconds: float, seed: int) -> float:
            # the seed's own slice (its lengths, in trace order), arrival times ignored: a closed loop keeps it full
            sl = schedule(rows, 1.0, 1000.0, 16384, seed)
            best = 0.0
            for clients in levels:
                wait_idle(emus)
                cap, n, occ = uvloop.run(
                    measure_trace_capacity(
                        routers[via], sl, "demo-llm", clients, args.calibrate_warmup_s, seconds, emus
                    )
                )
                best = max(best, cap)
                print(f"# trace capacity (seed {seed}'s requests, {clients} closed-loop clients through {via}): "
                      f"{cap:.2f} req/s ({n} completions in {seconds:g} s); load average {os.getloadavg()[0]:.2f}; "
                      f"mean running per runtime {' '.join(f'{o:.1f}' for o in occ)}", flush=True)  # fmt: skip
            wait_idle(emus)
            print(f"# capacity taken: {best:.2f} req/s, the best of {len(levels)} client counts", flush=True)
            return best

        for trace in traces:
            rows = load_trace(TRACES[trace])
            mean_ctx = sum(r[1] for r in rows) / len(rows)
            mean_gen = sum(r[2] for r in rows) / len(rows)
            model_cap = sum(capacity_rps(p, args.max_num_seqs, mean_ctx, mean_gen) for p in FLEET)
            mean_cap = uvloop.run(measure_capacity(emus, args.max_num_seqs, int(mean_ctx), int(mean_gen), 10.0))
            wait_idle(emus)
            print(f"# trace {trace}: {len(rows)} requests, mean context {mean_ctx:.0f}, output {mean_gen:.0f} tokens; "
                  f"timing-model capacity {model_cap:.2f} req/s, the mean request kept in every slot {mean_cap:.2f} "
                  f"req/s (direct, unstreamed; not used)", flush=True)  # fmt: skip
            for seed in range(args.seeds):
                sl = schedule(rows, 1.0, 1000.0, 16384, seed)  # the seed's slice, as the probe sends it
                modelled, n_model = model_trace_capacity(sl, FLEET, args.max_num_seqs)
                print(f"# trace {trace} seed {seed}: modelled capacity {modelled:.2f} req/s (the emulators' engines "
                      f"in virtual time, every slot busy with the slice's requests, {n_model} completions)",
                      flush=True)  # fmt: skip
                if args.capacity == "model":
                    caps[(trace, seed)] = modelled
                elif seed == 0:
                    caps[(trace, seed)] = trace_capacity(rows, args.calibrate_s, 0)
                elif args.recalibrate_s > 0:
                    caps[(trace, seed)] = trace_capacity(rows, args.recalibrate_s, seed)
                else:
                    caps[(trace, seed)] = caps[(trace, 0)]
                run_caps = {load: own_capacity(rows, seed, load, caps[(trace, seed)]) for load in loads}
                how = "model, of the run's own requests" if args.capacity == "model" else args.capacity
                for load, cap in run_caps.items():
                    n_run = args.requests or max(10, int(load * cap * args.duration))
                    print(f"# trace {trace} seed {seed} @ {load:.0%}: offered {load * cap:.2f} req/s of a "
                          f"capacity of {cap:.2f} req/s ({how}), {n_run} requests per run", flush=True)  # fmt: skip
                for load in loads:
                    for c in configs:
                        if not (args.hedging_straggler_only and c.endswith("+hedging")):
                            run(trace, rows, run_caps[load], c, load, seed, "")
        names = ("hybrid_mesh", "hybrid_mesh+hedging")
        straggler = [c for c in names if c in routers] if args.straggler > 0 else []
        if straggler:
            trace = traces[0]
            rows = load_trace(TRACES[trace])
            httpx.post(emus[0] + "/emulator/faults", json={"slowdown": args.straggler}, timeout=10).raise_for_status()
            print(f"# straggler pass: {FLEET[0]} at {emus[0]} slowed down {args.straggler:g}x", flush=True)
            for seed in range(args.seeds):
                for c in straggler:
                    cap = own_capacity(rows, seed, args.straggler_load, caps[(trace, seed)])
                    run(trace, rows, cap, c, args.straggler_load, seed, " [straggler]")
        if decisions:
            import shutil

            (decisions / "fleet.json").write_text(json.dumps(dict(zip(emus, FLEET, strict=True)), indent=1))

            for c in our_configs:
                name = c.replace("+", "_")
                shutil.copy(ps.tmp / f"{name}.log", decisions / f"router_{name}.log")
    print()
    print(f"{'trace':<5} {'config':<26} {'load':>5} {'ok/n':>11} {'TTFT p50':>22} {'TTFT p99':>22} "
          f"{'e2e p99':>22} {'req/s':>6} {'offer':>6} {'serve':>6} {'queue':>5} {'hedge%':>6}  verdict")  # fmt: skip

    def fleet_over(trace: str, label: str, load: float, seed: int) -> bool:
        """Every configuration's queue grew at this seed: the offered load is more than the fleet serves, and no
        p99 there is a routing result. Where one configuration kept up, another's growing queue is its routing."""
        rows = [
            rs[seed]
            for (t, c, ld), rs in table.items()
            if t == trace and ld == load and c.endswith(" [straggler]") == bool(label) and len(rs) > seed
        ]
        return bool(rows) and all(r["overloaded"] for r in rows)

    for (trace, c, load), rs in table.items():
        ok, n = sum(int(r["ok"]) for r in rs), sum(int(r["n"]) for r in rs)
        label = " [straggler]" if c.endswith(" [straggler]") else ""
        over = sum(int(r["overloaded"]) for r in rs)
        fleet = sum(fleet_over(trace, label, load, i) for i in range(len(rs)))
        behind = over - fleet
        verdict = "kept up" if not over else ", ".join(
            x for x in (f"FLEET OVERLOADED in {fleet}/{len(rs)} seeds (left out)" if fleet else "",
                        f"fell behind in {behind}/{len(rs)} where another kept up" if behind else "") if x
        )  # fmt: skip
        print(
            f"{trace:<5} {c:<26} {load:>5.0%} {ok:>5}/{n:<5} {spread([r['ttft_p50'] for r in rs]):>22} "
            f"{spread([r['ttft_p99'] for r in rs]):>22} {spread([r['e2e_p99'] for r in rs]):>22} "
            f"{sum(r['tput'] for r in rs) / len(rs):>6.2f} {sum(r['offered'] for r in rs) / len(rs):>6.2f} "
            f"{sum(r['served'] for r in rs) / len(rs):>6.2f} {max(r['backlog'] for r in rs):>5.0f} "
            f"{100 * sum(r['hedge'] for r in rs) / len(rs):>5.1f}%  {verdict}"
        )
    print("# req/s: completions over the whole run, drain included; offer/serve: arrivals/s and completions/s over "
          "the last 3/4 of the arrivals; queue: requests without a first byte when the last was sent (the most over "
          "seeds). A row falls behind when that queue grew by more than 5% of the window's arrivals, or ended above "
          "max(16, 2 x its median); where every row of a seed fell behind, the fleet was overloaded, the p99s are "
          "backlogs, and that seed is left out of the summary's ratios; where another kept up, falling behind is "
          "the router's doing and counts.")  # fmt: skip
    per_p99 = [int(r["ok"]) for rs in table.values() for r in rs]
    first = traces[0]
    hi = min(loads, key=lambda x: abs(x - 0.9))

    def p99s(c: str, load: float, label: str = "") -> list[float]:
        # a seed where every configuration fell behind: nan, so that no ratio rests on a backlog
        rs = table.get((first, c + label, load), [])
        return [float("nan") if fleet_over(first, label, load, i) else r["ttft_p99"] for i, r in enumerate(rs)]

    ours = p99s("hybrid_mesh", hi)
    peers = [p99s(c, hi) for c in configs if c.startswith("vllm:")]
    best_peer = [min((x for x in xs if x == x), default=float("nan")) for xs in zip(*peers, strict=False)]
    lq = p99s("least_queue", hi)

    def worst(xs: list[float]) -> float:
        xs = [x for x in xs if x == x]
        return max(xs) if xs else float("nan")

    vs_peer = worst([o / b for o, b in zip(ours, best_peer, strict=False)])
    vs_lq = worst([o / b for o, b in zip(ours, lq, strict=False)])
    plain = p99s("hybrid_mesh", args.straggler_load, " [straggler]")
    hedged = p99s("hybrid_mesh+hedging", args.straggler_load, " [straggler]")
    ratios = [h / p for h, p in zip(hedged, plain, strict=False) if h == h and p == p]
    hedge_ratio = sum(ratios) / len(ratios) if ratios else float("nan")
    hrows = table.get((first, "hybrid_mesh+hedging [straggler]", args.straggler_load), [])
    extra = sum(r["hedge"] for r in hrows) / len(hrows) if hrows else float("nan")
    seed_peer = [round(o / b, 2) for o, b in zip(ours, best_peer, strict=False)]
    seed_lq = [round(o / b, 2) for o, b in zip(ours, lq, strict=False)]
    print(f"# per-seed p99 TTFT ratios at {hi:.0%}: vs best peer {seed_peer}, vs least_queue {seed_lq}; "
          f"hedged/plain with straggler {[round(x, 2) for x in ratios]}")  # fmt: skip
    overloaded = sum(int(r["overloaded"]) for rs in table.values() for r in rs)
    print(f"# requests per p99: {min(per_p99, default=0)}-{max(per_p99, default=0)} (a p99 rests on its "
          f"{min(per_p99, default=0) // 100}-{max(per_p99, default=0) // 100} slowest); overloaded runs: "
          f"{overloaded} of {len(per_p99)}; wall "
          f"{time.perf_counter() - t_start:.0f} s; load average at end: {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"summary: p99_ttft_ratio_vs_best_peer_90={vs_peer:.2f} p99_ttft_ratio_vs_least_queue_90={vs_lq:.2f} "
          f"hedge_p99_ttft_ratio_straggler={hedge_ratio:.2f} hedge_extra_load={extra:.3f} "
          f"seeds={args.seeds}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
