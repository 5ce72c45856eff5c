"""Disaggregated prefill/decode against colocated serving, and against vllm-router's prefill/decode mode, on the
same emulated fleet of H100s (one process per GPU) with long-prompt traffic, all in one run.

    .venv/bin/python bench/pd_disagg.py [--gpus 4] [--prefill 3] [--rates 7,9] [--duration 20] [--share 0.5]
        [--slo-ttft 2.0] [--slo-tpot 0.025] [--vllm-router-policies round_robin,power_of_two,cache_aware]

Configurations, each replaying the same requests (open loop, Poisson arrivals):
- colocated: `--gpus` emulated runtimes of role both behind our router (cache_aware): prefills and decodes share
  every GPU, so each prefill chunk stalls the decodes batched with it.
- pd: the same number of GPUs split into `--prefill` prefill and the rest decode runtimes (vLLM's NixlConnector
  fields, the KV pulled over a modelled 100 Gbit/s link), behind our router's disaggregated serving (router/pd.py):
  the pair by queued prefill tokens, decode load, cached prefix and transfer cost.
- vllm-router PD: the same prefill and decode runtimes behind `vllm-router --vllm-pd-disaggregation` with each of
  `--vllm-router-policies` (installed into .venv-vllm-router by pip when missing); the best of them by p99 TTFT is
  compared.

Traffic: long prompts, sent as token ids: a document of 2,000 to 14,000 tokens (uniform) and a question of 32-96
tokens; `--share` of the requests ask about one of the 8 latest documents (its prefix may be cached where it was
prefilled), the rest bring a new one (`--share 0`: nothing is cached). Outputs of 64 to 192 tokens, streamed.
TTFT is the time to the first token at the client; ITL the gaps between tokens at the client; TPOT a request's
(e2e - TTFT) / (tokens - 1). Goodput: requests per second that finished with TTFT <= --slo-ttft and TPOT <=
--slo-tpot (DistServe's definition), over the replay's wall time. Prefix caches are reset between configurations
that share runtimes. Past about 10 requests/s the one decode GPU of the default 3 + 1 split saturates (TPOT over
20 ms for every disaggregated configuration alike): a higher rate needs another split (`--prefill`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import router_overhead as ro
import routing_quality as rq

MODEL = "demo-llm"
LINK_GBPS = 100.0


@dataclass(slots=True)
class Req:
    at: float
    ids: list[int]
    gen: int


@dataclass(slots=True)
class Result:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    itls: list[float] = field(default_factory=list)
    tokens: int = 0

    @property
    def tpot(self) -> float:
        return (self.e2e - self.ttft) / (self.tokens - 1) if self.tokens > 1 else 0.0


def workload(rate: float, duration: float, seed: int, share: float) -> list[Req]:
    """Poisson arrivals of long prompts: a document of 2,000-14,000 tokens and a question of 32-96 tokens. With
    probability `share` the document is one of the 8 most recent (a follow-up question on it: its KV may be cached
    somewhere), else a new one."""
    rng = random.Random(seed)
    docs: list[list[int]] = []
    out: list[Req] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return out
        if docs and rng.random() < share:
            doc = rng.choice(docs[-8:])
        else:
            doc = [rng.randrange(100, 30000) for _ in range(rng.randint(2000, 14000))]
            docs.append(doc)
        question = [rng.randrange(100, 30000) for _ in range(rng.randint(32, 96))]
        out.append(Req(t, doc + question, rng.randint(64, 192)))


async def replay(url: str, reqs: list[Req]) -> tuple[list[Result], float]:
    import aiohttp

    results: list[Result] = []
    headers = {"Authorization": "Bearer demo-key", "Content-Type": "application/json"}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:

        async def one(r: Req) -> None:
            body = json.dumps({"model": MODEL, "prompt": r.ids, "max_tokens": r.gen, "stream": True}).encode()
            res = Result(False)
            t0 = time.perf_counter()
            last = 0.0
            try:
                async with s.post(url + "/v1/completions", data=body, headers=headers) as resp:
                    if resp.status != 200:
                        await resp.read()
                        results.append(res)
                        return
                    tail = b""
                    async for chunk in resp.content.iter_any():
                        now = time.perf_counter()
                        events = chunk.count(b'"text"')
                        if events:
                            if not res.tokens:
                                res.ttft = now - t0
                            else:
                                res.itls.append(now - last)
                                res.itls.extend([0.0] * (events - 1))  # tokens that arrived together
                            last = now
                            res.tokens += events
                        tail = (tail + chunk)[-64:]
                    res.e2e = time.perf_counter() - t0
                    res.ok = tail.endswith(b"[DONE]\n\n") and res.tokens == r.gen
            except aiohttp.ClientError:
                pass
            results.append(res)

        wall = await rq.open_loop(reqs, one)
    return results, wall


def router_cfg(targets: list[tuple[str, str]]) -> dict[str, object]:
    cfg = ro.router_cfg([u for u, _ in targets], "cache_aware")
    cfg["targets"] = [
        {"model": MODEL, "url": u, "node": f"gpu{i}", "zone": "z1", "role": role} for i, (u, role) in enumerate(targets)
    ]
    cfg["disaggregation"] = {"same_zone_gbps": LINK_GBPS}
    cfg["logging"] = {"level": "WARNING", "access_log": False}
    return cfg


def start_vllm_router_pd(ps: ro.Procs, prefills: list[str], decodes: list[str], policy: str) -> str:
    exe = ro.ensure_vllm_router()
    port = ro.free_port()
    argv = [str(exe), "--host", "127.0.0.1", "--port", str(port), "--vllm-pd-disaggregation"]
    for u in prefills:
        argv += ["--prefill", u]
    for u in decodes:
        argv += ["--decode", u]
    argv += ["--policy", policy, "--prometheus-port", str(ro.free_port()), "--log-level", "warning",
             "--request-timeout-secs", "600"]  # fmt: skip
    ps.start(argv, f"vllm-router-pd-{policy}")
    url = f"http://127.0.0.1:{port}"
    ro.wait_http(url + "/health", timeout=60)
    return url


def reset(emus: list[str]) -> None:
    rq.wait_idle(emus)
    for u in emus:
        httpx.post(u + "/reset_prefix_cache", timeout=10).raise_for_status()


def summarize(results: list[Result], wall: float, slo_ttft: float, slo_tpot: float) -> dict[str, float]:
    ok = [r for r in results if r.ok]
    good = [r for r in ok if r.ttft <= slo_ttft and r.tpot <= slo_tpot]
    itls = [x for r in ok for x in r.itls]
    return {
        "n": len(results),
        "ok": len(ok),
        "good": len(good),
        "goodput": len(good) / wall,
        "ttft_p50": rq.pct([r.ttft for r in ok], 0.5),
        "ttft_p99": rq.pct([r.ttft for r in ok], 0.99),
        "tpot_p50": rq.pct([r.tpot for r in ok], 0.5),
        "tpot_p99": rq.pct([r.tpot for r in ok], 0.99),
        "itl_p99": rq.pct(itls, 0.99),
        "itl_n": len(itls),
    }


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--prefill", type=int, default=3, help="of the GPUs, how many prefill (the rest decode)")
    ap.add_argument("--rates", default="7,9", help="offered requests/s, comma-separated; the summary uses the last")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per rate and configuration")
    ap.add_argument("--slo-ttft", type=float, default=2.0)
    ap.add_argument("--slo-tpot", type=float, default=0.025)
    ap.add_argument("--vllm-router-policies", default="round_robin,power_of_two,cache_aware")
    ap.add_argument("--share", type=float, default=0.5, help="share of requests that ask about a recent document")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if not 0 < a.prefill < a.gpus:
        ap.error("--prefill must leave at least one decode GPU")
    signal.signal(signal.SIGTERM, _exit)
    rates = [float(x) for x in a.rates.split(",")]
    policies = [p for p in a.vllm_router_policies.split(",") if p]
    ro.ensure_vllm_router()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"fleet: {a.gpus} x h100 ({a.prefill} prefill + {a.gpus - a.prefill} decode when disaggregated), "
          f"KV link {LINK_GBPS:g} Gbit/s; SLO TTFT <= {a.slo_ttft:g}s, TPOT <= {a.slo_tpot * 1000:g}ms; {load}",
          flush=True)  # fmt: skip
    emu_args = ("--profile", "h100", "--kv-link-gbps", str(LINK_GBPS))
    rows: list[tuple[float, str, dict[str, float]]] = []
    for rate in rates:
        reqs = workload(rate, a.duration, a.seed, a.share)
        with ro.procs() as ps:
            emus = [ro.start_emulator(ps, f"colo{i}", *emu_args, "--seed", str(i)) for i in range(a.gpus)]
            url = ro.start_router(ps, router_cfg([(u, "both") for u in emus]), "router-colocated")
            rows.append((rate, "colocated (ours)", summarize(*asyncio.run(replay(url, reqs)), a.slo_ttft, a.slo_tpot)))
            print(f"  {rate:g} req/s colocated done", flush=True)
        with ro.procs() as ps:
            pre = [ro.start_emulator(ps, f"p{i}", *emu_args, "--role", "prefill", "--seed", str(i))
                   for i in range(a.prefill)]  # fmt: skip
            dec = [ro.start_emulator(ps, f"d{i}", *emu_args, "--role", "decode", "--seed", str(10 + i))
                   for i in range(a.gpus - a.prefill)]  # fmt: skip
            targets = [(u, "prefill") for u in pre] + [(u, "decode") for u in dec]
            url = ro.start_router(ps, router_cfg(targets), "router-pd")
            rows.append((rate, "pd (ours)", summarize(*asyncio.run(replay(url, reqs)), a.slo_ttft, a.slo_tpot)))
            print(f"  {rate:g} req/s pd done", flush=True)
            for policy in policies:
                reset(pre + dec)
                url = start_vllm_router_pd(ps, pre, dec, policy)
                res = summarize(*asyncio.run(replay(url, reqs)), a.slo_ttft, a.slo_tpot)
                rows.append((rate, f"vllm-router pd {policy}", res))
                print(f"  {rate:g} req/s vllm-router {policy} done", flush=True)

    print()
    head = ("rate", "config", "requests", "ok", "in SLO", "goodput/s", "TTFT p50", "TTFT p99", "TPOT p50",
            "TPOT p99", "ITL p99", "ITL samples")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for rate, name, r in rows:
        print(f"| {rate:g} | {name} | {r['n']} | {r['ok']} | {r['good']} | {r['goodput']:.2f} | {r['ttft_p50']:.3f} | "
              f"{r['ttft_p99']:.3f} | {r['tpot_p50'] * 1000:.1f}ms | {r['tpot_p99'] * 1000:.1f}ms | "
              f"{r['itl_p99'] * 1000:.1f}ms | {r['itl_n']} |")  # fmt: skip
    print("(TTFT in seconds; each TTFT/TPOT p99 rests on the 'ok' requests of its row, each ITL p99 on its samples)")
    last = rates[-1]
    at = {name: r for rate, name, r in rows if rate == last}
    colo, pd = at["colocated (ours)"], at["pd (ours)"]
    vr = [r for name, r in at.items() if name.startswith("vllm-router")]
    best = min(vr, key=lambda r: r["ttft_p99"]) if vr else None

    def ratio(x: float, y: float) -> float:
        return x / y if y > 0 else float("inf")

    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"load after the run: {load}")
    print(
        f"summary: pd_goodput_ratio_vs_colocated={ratio(pd['goodput'], colo['goodput']):.2f} "
        f"pd_p99_itl_ratio_vs_colocated={ratio(pd['itl_p99'], colo['itl_p99']):.2f} "
        f"pd_ttft_ratio_vs_vllm_router_pd={ratio(pd['ttft_p99'], best['ttft_p99']) if best else float('nan'):.2f} "
        f"rate={last:g} requests_per_config={pd['n']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
