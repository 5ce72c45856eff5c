"""Cache-aware routing: a mixed fleet of 8 emulated runtimes with vLLM-style prefix caching, replayed through our
router (baseline_rr, least_queue, cache_aware, hybrid_mesh, and cache_aware or hybrid_mesh on two routers side by
side, `_x2`: the requests alternate between them, each subscribed to every runtime's KV events; `@agent` after any
of ours: the routers take their targets from an agent scraping the runtimes every 0.5 s, so each sees the queues
the other's requests make, instead of static targets, where each knows only its own requests in flight) and
through peers installed from PyPI by this script (vllm-router cache_aware and power_of_two; smg cache_aware and
power_of_two), at 70% and 90% load, on a shared-prefix workload, a multi-turn workload and the Azure trace (no
sharing, the control); and, with `lora` among the workloads, a LoRA mix on a fleet of its own (below).

    .venv/bin/python bench/cache_routing.py [--duration 15] [--loads 0.7,0.9] [--configs ...] [--scale 0.2]
        [--workloads shared_prefix,multi_turn,azure,lora] [--adapters 8 --max-loras 2 --lora-load-s 0.5]

Fleet: 2xH100, 2xA100, 2xL40S, two 3g.40gb MIG slices, `--max-num-seqs` batch slots and `--kv-tokens` of KV cache
each (small enough that no runtime holds every group's prefix: locality decides the hit rate). Every runtime
publishes vLLM-format KV events; our routers subscribe to them (`cache.kv_events`), so their index is exact. Peers
get what they read: plain HTTP workers (their cache_aware keeps an approximate tree of the texts they routed).
smg's ZeroMQ-fed variant does not exist for HTTP workers (smg 1.13 takes KV events over its own gRPC worker
protocol), and vllm-router's kv_aware needs the model's HuggingFace tokenizer, which the emulated model does not
have: both are left out and said so.

Load: the fleet's capacity is measured first on this machine (closed loop, each runtime kept full with the
workload's mean request sent as a bare token count, so nothing is cached); 70% and 90% are fractions of that
cache-less capacity. Lengths: the field's shared-prefix setting (150 groups x 5 prompts, 9,500-token system prompt,
500-token question, 1,000-token output) scaled by `--scale` (0.2: 1,900 / 100 / 32 tokens, output scaled to 32 so
a run takes seconds of decode, not minutes). Each configuration starts from empty caches (POST
/reset_prefix_cache) and replays the same requests. TTFT is the time to the first streamed byte at the client;
"rt" columns are the TTFT the runtimes themselves measured (their vllm:time_to_first_token_seconds histograms,
interpolated within buckets), which leaves out each router's own processing: on a small, shared machine a Python
router's CPU time shows in the client figures, while the rt figures judge where the requests were sent.

LoRA (`--workloads ...,lora`): the same mix of GPUs started with `--adapters` adapters each, `--max-loras` slots and
`--lora-load-s` per load; 200-token prompts (nothing shared) asking for the adapters with Zipf(1.1) popularity at
`--lora-load` of the measured capacity. Our routers learn residency from an agent scraping the runtimes and are
given the load time by their routing policy (`lora_load_s`); `cache_aware:default` leaves it at the built-in 25 ms.
The "loads" column counts the adapters the runtimes loaded. smg 1.13 answers every adapter request 404
`model_not_found` ("No worker available for model 'ad0'": it knows each worker by its base model), so its rows there
are all failures and it is left out of the LoRA ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import router_overhead as ro
import routing_quality as rq
from workloads.prefix import Conversation, Request, lora_mix, multi_turn, shared_prefix, words

from agents.emulator.profiles import get_profile

TRACE = ro.ROOT / "meshweb" / "data" / "traces" / "azure_llm_2023_conv.csv"
FLEET = ["h100", "h100", "a100", "a100", "l40s", "l40s", "h100-mig-3g.40gb", "a100-mig-3g.40gb"]
OURS = ("baseline_rr", "least_queue", "cache_aware", "hybrid_mesh", "cache_aware_x2", "hybrid_mesh_x2")
SMG_VENV = ro.ROOT / ".venv-smg"


def ensure_smg() -> Path:
    exe = SMG_VENV / "bin" / "smg"
    if not exe.exists():
        print("installing smg (pip, own venv)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(SMG_VENV)], check=True)
        subprocess.run([sys.executable, "-m", "pip", "--python", str(SMG_VENV / "bin" / "python"), "install", "-q",
                        "smg"], check=True)  # fmt: skip
    return exe


def start_smg(ps: ro.Procs, upstreams: list[str], policy: str) -> str:
    exe = ensure_smg()
    port = ro.free_port()
    ps.start([str(exe), "launch", "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *upstreams,
              "--policy", policy, "--prometheus-port", str(ro.free_port()), "--log-level", "warn",
              "--request-timeout-secs", "600"], f"smg-{policy}")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    ro.wait_http(url + "/health", timeout=60)
    return url


@dataclass(slots=True)
class Result:
    ok: bool
    ttft: float
    e2e: float


async def _stream(s: Any, url: str, body: dict[str, Any], results: list[Result], headers: dict[str, str]) -> str:
    """One streamed chat completion; returns the answer's text (for the next turn of a conversation)."""
    import aiohttp

    t0 = time.perf_counter()
    ttft = 0.0
    text: list[str] = []
    try:
        async with s.post(url + "/v1/chat/completions", data=json.dumps(body).encode(), headers=headers) as resp:
            if resp.status != 200:
                await resp.read()
                results.append(Result(False, 0.0, time.perf_counter() - t0))
                return ""
            buf = b""
            done = False
            async for chunk in resp.content.iter_any():
                if not ttft:
                    ttft = time.perf_counter() - t0
                buf += chunk
                *lines, buf = buf.split(b"\n\n")
                for line in lines:
                    if line == b"data: [DONE]":
                        done = True
                    elif line.startswith(b"data: "):
                        for c in json.loads(line[6:]).get("choices") or []:
                            text.append((c.get("delta") or {}).get("content") or "")
            results.append(Result(done, ttft, time.perf_counter() - t0))
    except (aiohttp.ClientError, ValueError):
        results.append(Result(False, ttft, time.perf_counter() - t0))
    return "".join(text)


async def replay(urls: list[str], reqs: list[Request], convs: list[Conversation]) -> tuple[list[Result], float]:
    """Open-loop arrivals; a conversation's next turn goes when its previous one is answered (+ think time). With
    several router URLs, requests alternate between them (sessions stay on one)."""
    import aiohttp

    results: list[Result] = []
    headers = {"Authorization": "Bearer demo-key", "Content-Type": "application/json"}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
        start = time.perf_counter()

        async def at(t: float) -> None:
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

        async def one(i: int, r: Request) -> None:
            await at(r.at)
            body = {"model": r.model or "demo-llm", "messages": r.messages, "max_tokens": r.max_tokens, "stream": True}
            await _stream(s, urls[i % len(urls)], body, results, {**headers, "x-session-id": r.session})

        async def conversation(i: int, c: Conversation) -> None:
            await at(c.at)
            history: list[dict[str, str]] = [{"role": "system", "content": c.system}]
            for u in c.users:
                history.append({"role": "user", "content": u})
                body = {"model": "demo-llm", "messages": history, "max_tokens": c.max_tokens, "stream": True}
                answer = await _stream(s, urls[i % len(urls)], body, results, {**headers, "x-session-id": c.session})
                history.append({"role": "assistant", "content": answer})
                await asyncio.sleep(c.think_s)

        await asyncio.gather(
            *(one(i, r) for i, r in enumerate(reqs)), *(conversation(i, c) for i, c in enumerate(convs))
        )
        wall = time.perf_counter() - start
    return results, wall


def azure(rate: float, duration: float, scale: float, seed: int) -> list[Request]:
    """The Azure conversation trace's arrivals (compressed to `rate`) and lengths (scaled), as random text."""
    rows = rq.load_trace(TRACE)
    rng = random.Random(seed)
    out = []
    for r in rq.schedule(rows, rate, duration, 16384):
        ctx = max(8, int(r.ctx * scale * 2.5))  # the trace's prompts are short: keep them near the others' scale
        out.append(Request(r.at, [{"role": "user", "content": words(rng, ctx)}], max(1, min(64, int(r.gen * scale))),
                           -1))  # fmt: skip
    return out


def emu_stats(emus: list[str]) -> list[dict[str, Any]]:
    return [httpx.get(u + "/emulator/stats", timeout=10).json() for u in emus]


def runtime_ttft(emus: list[str]) -> dict[float, float]:
    """The fleet's TTFT histogram as the runtimes measured it (vllm:time_to_first_token_seconds, cumulative)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for u in emus:
        for fam in text_string_to_metric_families(httpx.get(u + "/metrics", timeout=10).text):
            if fam.name == "vllm:time_to_first_token_seconds":
                for smp in fam.samples:
                    if smp.name.endswith("_bucket"):
                        le = float(smp.labels["le"])
                        out[le] = out.get(le, 0.0) + smp.value
    return out


def hist_pct(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Quantile of the requests between two cumulative histograms, interpolated within its bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return float("nan")
    rank, lo, prev = q * total, 0.0, 0.0
    for b, c in zip(bounds, counts, strict=True):
        if c >= rank:
            if math.isinf(b):
                return lo
            return lo + (b - lo) * (rank - prev) / max(c - prev, 1e-9)
        lo, prev = b, c
    return lo


def fallbacks(urls: list[str], family: str = "infermesh_router_strategy_fallbacks") -> float:
    """Decisions our routers handed to the fallback (a strategy over its decision budget or failing), so far; with
    `family` ..._overruns: decisions over the budget whose (built-in's) answer was kept."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for u in urls:
        for fam in text_string_to_metric_families(httpx.get(u + "/metrics", timeout=10).text):
            if fam.name == family:
                total += sum(smp.value for smp in fam.samples if smp.name.endswith("_total"))
    return total


OVERRUNS = "infermesh_router_strategy_overruns"


def reset_caches(emus: list[str]) -> None:
    rq.wait_idle(emus)
    for u in emus:
        httpx.post(u + "/reset_prefix_cache", timeout=10).raise_for_status()


LORA_OURS = ("least_queue", "cache_aware", "hybrid_mesh", "cache_aware:default")


def measure(emus: list[str], urls: list[str], reqs: list[Request], ours: bool) -> dict[str, float]:
    """Replay `reqs` through `urls` from empty caches; the row of the table."""
    import uvloop

    reset_caches(emus)
    s0, h0, f0 = emu_stats(emus), runtime_ttft(emus), fallbacks(urls) if ours else 0.0
    results, wall = uvloop.run(replay(urls, reqs, []))
    rq.wait_idle(emus)
    s1, h1, f1 = emu_stats(emus), runtime_ttft(emus), fallbacks(urls) if ours else 0.0
    ok = [r for r in results if r.ok]
    pairs = list(zip(s0, s1, strict=True))
    q = sum(b["prefix_cache"]["queries"] - a["prefix_cache"]["queries"] for a, b in pairs)
    h = sum(b["prefix_cache"]["hits"] - a["prefix_cache"]["hits"] for a, b in pairs)
    per = [b["requests"] - a["requests"] for a, b in pairs]
    mean = sum(per) / len(per)
    ttfts = [r.ttft for r in ok]
    return {
        "n": len(results), "ok": len(ok), "failed": len(results) - len(ok),
        "ttft_p50": rq.pct(ttfts, 0.5), "ttft_p90": rq.pct(ttfts, 0.9),
        "ttft_p99": rq.pct(ttfts, 0.99), "e2e_p99": rq.pct([r.e2e for r in ok], 0.99),
        "tput": len(ok) / wall, "hit": h / q if q else 0.0,
        "imbalance": max(per) / mean if mean else float("nan"), "wall": wall,
        "rt_p50": hist_pct(h0, h1, 0.5), "rt_p90": hist_pct(h0, h1, 0.9), "fallbacks": f1 - f0,
        "lora_loads": sum(b["lora"]["loads"] - a["lora"]["loads"] for a, b in pairs),
    }  # fmt: skip


def lora_phase(args: argparse.Namespace, peers: list[str]) -> dict[tuple[str, str, float], dict[str, float]]:
    """A fleet serving `--adapters` LoRA adapters (`--max-loras` slots each, `--lora-load-s` a load), requests with
    Zipf popularity over them. Our routers read the adapters' residency from an agent (it scrapes each runtime's
    /v1/models and vllm:lora_requests_info) and are told the load time by their routing policy (`lora_load_s`);
    `cache_aware:default` is the same strategy left at its built-in 25 ms. Peers route the adapter names as any
    model."""
    import uvloop

    adapters = [f"ad{k}" for k in range(args.adapters)]
    rows: dict[tuple[str, str, float], dict[str, float]] = {}
    with ro.procs() as ps:
        emus = [ro.start_emulator(
            ps, f"lora-emu{i}", "--profile", p, "--model", "demo-llm", "--seed", str(i), "--max-num-seqs",
            str(args.max_num_seqs), "--max-model-len", "16384", "--kv-tokens", str(args.kv_tokens), "--max-loras",
            str(args.max_loras), "--lora-load-s", str(args.lora_load_s), "--lora-modules",
            *(f"{a}=/adapters/{a}" for a in adapters),
        ) for i, p in enumerate(FLEET)]  # fmt: skip
        agent = rq.start_agent(ps, emus)
        routers: dict[str, list[str]] = {}
        for c in (*LORA_OURS, *peers):
            if c.startswith("vllm:"):
                routers[c] = [ro.start_vllm_router(ps, emus, c.split(":", 1)[1])]
                continue
            if c.startswith("smg:"):
                routers[c] = [start_smg(ps, emus, c.split(":", 1)[1])]
                continue
            strategy, _, variant = c.partition(":")
            policy: dict[str, object] = {"first_byte_timeout_s": 300, "deadline_s": 600,
                                         "hold_when_full": strategy not in ("cache_aware", "hybrid_mesh")}  # fmt: skip
            if variant != "default":
                policy["lora_load_s"] = args.lora_load_s  # the operator says what a load costs on this fleet
            cfg = ro.router_cfg([], strategy, **policy)
            cfg["agent"] = {"address": agent}
            cfg["logging"] = {"level": "WARNING", "access_log": False}
            url = ro.start_router(ps, cfg, name=f"lora-{c.replace(':', '-')}")
            want = len(FLEET) * (1 + len(adapters))  # a target per runtime for the base model and each adapter
            deadline = time.monotonic() + 30
            while httpx.get(url + "/healthz").json()["targets"]["agent"] < want and time.monotonic() < deadline:
                time.sleep(0.2)
            routers[c] = [url]
        cap = uvloop.run(rq.measure_capacity(emus, args.max_num_seqs, args.lora_prompt, 32, args.calibrate_s))
        rate = args.lora_load * cap
        n = int(rate * args.duration)
        reqs = lora_mix(adapters=adapters, requests=n, prompt_len=args.lora_prompt, output_len=32, rate=rate,
                        seed=args.seed)  # fmt: skip
        print(f"# LoRA fleet: {len(adapters)} adapters (Zipf 1.1), {args.max_loras} slots and {args.lora_load_s:g} s "
              f"a load per runtime; capacity {cap:.2f} req/s; {n} requests at {args.lora_load:.0%}",
              flush=True)  # fmt: skip
        for urls in routers.values():  # warm-up: every router's first requests, and the adapters' first loads
            uvloop.run(replay(urls, reqs[: len(adapters) * 2], []))
        for c, urls in routers.items():
            row = measure(emus, urls, reqs, not c.startswith(("vllm:", "smg:")))
            rows[("lora", c, args.lora_load)] = row
            print(f"lora {c} @ {args.lora_load:.0%}: {json.dumps({k: round(v, 3) for k, v in row.items()})}",
                  flush=True)  # fmt: skip
    return rows


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of arrivals per run")
    ap.add_argument("--loads", default="0.7,0.9")
    ap.add_argument("--workloads", default="shared_prefix,multi_turn,azure")
    ap.add_argument("--configs", default="baseline_rr,least_queue,cache_aware,hybrid_mesh,cache_aware_x2,"
                    "vllm:cache_aware,vllm:power_of_two,smg:cache_aware,smg:power_of_two")  # fmt: skip
    ap.add_argument("--scale", type=float, default=0.2, help="multiplies the field's token lengths")
    ap.add_argument("--groups", type=int, default=32, help="shared-prefix groups (prompts per group follow the rate)")
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--kv-tokens", type=int, default=20_000, help="KV cache of each runtime, in tokens")
    ap.add_argument("--calibrate-s", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--adapters", type=int, default=8, help="LoRA adapters of the lora workload")
    ap.add_argument("--max-loras", type=int, default=2, help="adapter slots per runtime (lora workload)")
    ap.add_argument("--lora-load-s", type=float, default=0.5, help="seconds to load an adapter (lora workload)")
    ap.add_argument("--lora-load", type=float, default=0.7, help="load of the lora workload (fraction of capacity)")
    ap.add_argument("--lora-prompt", type=int, default=200, help="prompt tokens of the lora workload")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _exit)
    loads = [float(x) for x in args.loads.split(",")]
    configs = args.configs.split(",")
    workloads = args.workloads.split(",")
    unknown = [w for w in workloads if w not in ("shared_prefix", "multi_turn", "azure", "lora")]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; known: shared_prefix, multi_turn, azure, lora")
    if args.adapters < 1 or args.max_loras < 1 or args.lora_load_s < 0:
        ap.error("--adapters and --max-loras must be >= 1, --lora-load-s >= 0")
    bad = [c for c in configs if c.partition("@")[::2] not in ((o, v) for o in OURS for v in ("", "agent"))
           and not c.startswith(("vllm:", "smg:"))]  # fmt: skip
    if bad:
        ap.error(f"unknown config(s) {bad}; ours: {OURS} (each also as NAME@agent), peers: vllm:POLICY, smg:POLICY")
    if any(c.startswith("vllm:") for c in configs):
        ro.ensure_vllm_router()
    if any(c.startswith("smg:") for c in configs):
        ensure_smg()
    sc = args.scale
    sys_len, q_len, out_len = int(9500 * sc), int(500 * sc), max(8, int(1000 * sc * 0.16))
    print(f"# fleet {', '.join(FLEET)}; max_num_seqs {args.max_num_seqs}; kv_tokens {args.kv_tokens}; "
          f"shared prefix: system {sys_len}, question {q_len}, output {out_len} tokens, {args.groups} groups; "
          f"load average {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)  # fmt: skip
    table: dict[tuple[str, str, float], dict[str, float]] = {}
    main_workloads = [w for w in workloads if w != "lora"]
    if main_workloads:
        with ro.procs() as ps:
            emus: list[str] = []
            sources = []
            for i, p in enumerate(FLEET):
                pub, rep = ro.free_port(), ro.free_port()
                emus.append(ro.start_emulator(
                    ps, f"emu{i}", "--profile", p, "--model", "demo-llm", "--seed", str(i), "--max-num-seqs",
                    str(args.max_num_seqs), "--max-model-len", "16384", "--kv-tokens", str(args.kv_tokens),
                    "--block-size", "16", "--kv-events-endpoint", f"tcp://*:{pub}", "--kv-events-replay-endpoint",
                    f"tcp://*:{rep}",
                ))  # fmt: skip
                sources.append(
                    {"url": emus[-1], "endpoint": f"tcp://127.0.0.1:{pub}", "replay": f"tcp://127.0.0.1:{rep}"}
                )
            import uvloop

            mean_ctx = sys_len + q_len
            cap = uvloop.run(rq.measure_capacity(emus, args.max_num_seqs, mean_ctx, out_len, args.calibrate_s))
            print(f"# measured cache-less fleet capacity: {cap:.2f} req/s ({mean_ctx}-token prompts, {out_len} out)",
                  flush=True)  # fmt: skip
            routers: dict[str, list[str]] = {}
            agent = ""
            for c in configs:
                if c.startswith("vllm:"):
                    routers[c] = [ro.start_vllm_router(ps, emus, c.split(":", 1)[1])]
                    continue
                if c.startswith("smg:"):
                    routers[c] = [start_smg(ps, emus, c.split(":", 1)[1])]
                    continue
                base, _, via = c.partition("@")
                strategy = base.removesuffix("_x2")
                hold = strategy not in ("cache_aware", "hybrid_mesh")
                policy: dict[str, object] = {"first_byte_timeout_s": 300, "deadline_s": 600, "hold_when_full": hold}
                if via == "agent":
                    agent = agent or rq.start_agent(ps, emus)
                    cfg = ro.router_cfg([], strategy, **policy)
                    cfg["agent"] = {"address": agent}
                else:
                    cfg = ro.router_cfg(emus, strategy, **policy)
                    # what an operator's static config says of each runtime: its node, batch slots and MIG slice
                    cfg["targets"] = [{"model": "demo-llm", "url": u, "node": f"n{i}",
                                       "max_concurrency": args.max_num_seqs,
                                       "mig_profile": get_profile(FLEET[i]).mig_profile}
                                      for i, u in enumerate(emus)]  # fmt: skip
                cfg["cache"] = {"kv_events": sources}
                cfg["logging"] = {"level": "WARNING", "access_log": False}
                n = 2 if base.endswith("_x2") else 1
                routers[c] = [ro.start_router(ps, cfg, name=f"{c.replace('@', '-')}-{k}") for k in range(n)]
                for url in routers[c] if via == "agent" else ():
                    deadline = time.monotonic() + 30
                    while httpx.get(url + "/healthz").json()["targets"]["agent"] < len(FLEET):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{c}: the agent's targets did not reach {url} within 30 s")
                        time.sleep(0.2)
            time.sleep(1.0)  # KV-event subscriptions reach the publishers
            warm = shared_prefix(groups=4, prompts_per_group=6, system_len=sys_len, question_len=q_len, output_len=4,
                                 rate=20.0, seed=args.seed + 99)  # fmt: skip
            for urls in routers.values():  # every router's first requests pay its start-up; not in the figures
                uvloop.run(replay(urls, warm, []))

            for wl in main_workloads:
                for load in loads:
                    rate = load * cap
                    reqs: list[Request] = []
                    convs: list[Conversation] = []
                    if wl == "shared_prefix":
                        n = max(args.groups, int(rate * args.duration))
                        reqs = shared_prefix(groups=args.groups, prompts_per_group=math.ceil(n / args.groups),
                                             system_len=sys_len, question_len=q_len, output_len=out_len, rate=rate,
                                             seed=args.seed)[:n]  # fmt: skip
                    elif wl == "multi_turn":
                        turns = 4
                        think = 0.5
                        n_conv = max(4, int(rate * args.duration / turns))
                        convs = multi_turn(conversations=n_conv, turns=turns, system_len=sys_len // 2,
                                           user_len=q_len, output_len=out_len, rate=rate / turns, think_s=think,
                                           seed=args.seed)  # fmt: skip
                    elif wl == "azure":
                        reqs = azure(rate, args.duration, sc, args.seed)
                    else:
                        ap.error(f"unknown workload {wl!r}")
                    for c, urls in routers.items():
                        reset_caches(emus)
                        ours = c.partition("@")[0] in OURS
                        s0, h0, f0 = emu_stats(emus), runtime_ttft(emus), fallbacks(urls) if ours else 0.0
                        o0 = fallbacks(urls, OVERRUNS) if ours else 0.0
                        results, wall = uvloop.run(replay(urls, reqs, convs))
                        rq.wait_idle(emus)
                        s1, h1, f1 = emu_stats(emus), runtime_ttft(emus), fallbacks(urls) if ours else 0.0
                        o1 = fallbacks(urls, OVERRUNS) if ours else 0.0
                        ok = [r for r in results if r.ok]
                        pairs = list(zip(s0, s1, strict=True))
                        q = sum(b["prefix_cache"]["queries"] - a["prefix_cache"]["queries"] for a, b in pairs)
                        h = sum(b["prefix_cache"]["hits"] - a["prefix_cache"]["hits"] for a, b in pairs)
                        per = [b["requests"] - a["requests"] for a, b in zip(s0, s1, strict=True)]
                        mean = sum(per) / len(per)
                        ttfts = [r.ttft for r in ok]
                        row = {
                            "n": len(results), "ok": len(ok), "failed": len(results) - len(ok),
                            "ttft_p50": rq.pct(ttfts, 0.5), "ttft_p90": rq.pct(ttfts, 0.9),
                            "ttft_p99": rq.pct(ttfts, 0.99), "e2e_p99": rq.pct([r.e2e for r in ok], 0.99),
                            "tput": len(ok) / wall, "hit": h / q if q else 0.0,
                            "imbalance": max(per) / mean if mean else float("nan"), "wall": wall,
                            "rt_p50": hist_pct(h0, h1, 0.5), "rt_p90": hist_pct(h0, h1, 0.9), "fallbacks": f1 - f0,
                            "overruns": o1 - o0,
                        }  # fmt: skip
                        table[(wl, c, load)] = row
                        print(f"{wl} {c} @ {load:.0%}: {json.dumps({k: round(v, 3) for k, v in row.items()})}",
                              flush=True)  # fmt: skip
    peers = [c for c in configs if c.startswith(("vllm:", "smg:"))]
    if "lora" in workloads:
        table.update(lora_phase(args, peers))
    print()
    print(f"{'workload':<14} {'config':<20} {'load':>4} {'ok/n':>9} {'TTFT p50':>8} {'p90':>7} {'p99':>7} "
          f"{'e2e p99':>7} {'req/s':>6} {'hit%':>5} {'imbal':>5} {'rt p50':>6} {'rt p90':>6} {'fb':>4} "
          f"{'late':>4} {'loads':>5}")  # fmt: skip
    for (wl, c, load), r in table.items():
        print(f"{wl:<14} {c:<20} {load:>4.0%} {int(r['ok']):>4}/{int(r['n']):<4} {r['ttft_p50']:>8.3f} "
              f"{r['ttft_p90']:>7.3f} {r['ttft_p99']:>7.3f} {r['e2e_p99']:>7.2f} {r['tput']:>6.2f} "
              f"{100 * r['hit']:>5.1f} {r['imbalance']:>5.2f} {r['rt_p50']:>6.3f} {r['rt_p90']:>6.3f} "
              f"{int(r['fallbacks']):>4} {int(r.get('overruns', 0)):>4} {int(r.get('lora_loads', 0)):>5}")  # fmt: skip
    print(
        "# fb: our routers' decisions handed to baseline_rr (a strategy failing, tripped, or a plugin over its 1 ms "
        "decision budget); late: decisions over the budget whose built-in's answer was kept; "
        "loads: LoRA adapters loaded by the runtimes during the run"
    )
    n99 = [int(r["ok"]) for r in table.values()]
    if n99:
        print(
            f"# each p99 rests on the slowest 1% of {min(n99)}-{max(n99)} requests per row "
            f"({max(1, min(n99) // 100)}-{max(1, max(n99) // 100)} requests); {args.duration:g} s of arrivals a run"
        )
    hi = max(loads)

    def ratio(wl: str, key: str, ours: str = "cache_aware", best=min, at: float = hi) -> float:  # type: ignore[no-untyped-def]
        mine = table.get((wl, ours, at))
        # a peer that served nothing has no figure to beat (smg 1.13 answers 404 model_not_found for an adapter name:
        # it knows each worker by its base model only)
        theirs = [table[(wl, p, at)][key] for p in peers if (wl, p, at) in table and table[(wl, p, at)]["ok"]]
        if not mine or not theirs or not best(theirs):
            return float("nan")
        return mine[key] / best(theirs)

    failed = sum(int(r["failed"]) for (wl, c, _), r in table.items() if c.partition("@")[0] in OURS or c in LORA_OURS)
    print(f"summary: p90_ttft_ratio_vs_best_peer_shared_prefix={ratio('shared_prefix', 'ttft_p90'):.2f} "
          f"p90_ttft_ratio_vs_best_peer_multiturn={ratio('multi_turn', 'ttft_p90'):.2f} "
          f"hit_rate_ratio_vs_best_peer={ratio('shared_prefix', 'hit', best=max):.2f} "
          f"azure_p99_ttft_ratio_vs_best_peer={ratio('azure', 'ttft_p99'):.2f} failed={failed} "
          f"runtime_p90_ttft_ratio_vs_best_peer_shared_prefix={ratio('shared_prefix', 'rt_p90'):.2f} "
          f"runtime_p90_ttft_ratio_vs_best_peer_multiturn={ratio('multi_turn', 'rt_p90'):.2f} "
          f"lora_p90_ttft_ratio_vs_best_peer={ratio('lora', 'ttft_p90', at=args.lora_load):.2f} "
          # the default strategy on the same workloads
          f"hybrid_p90_ttft_ratio_vs_best_peer_shared_prefix={ratio('shared_prefix', 'ttft_p90', 'hybrid_mesh'):.2f} "
          f"hybrid_p90_ttft_ratio_vs_best_peer_multiturn={ratio('multi_turn', 'ttft_p90', 'hybrid_mesh'):.2f} "
          f"hybrid_hit_rate_ratio_vs_best_peer={ratio('shared_prefix', 'hit', 'hybrid_mesh', best=max):.2f}"
          )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
