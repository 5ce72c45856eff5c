"""A virtual-time replay of a workload on a fleet of emulated engines, for per-decision analysis of routing policies.

The engines are the emulator's own scheduling core (`agents.emulator.engine.EngineCore`: continuous batching, paged
KV cache with vLLM's prefix caching), stepped in simulated time, so a policy is judged without a router's or a
loaded machine's CPU time in the figures and two policies see exactly the same arrivals. Our policies run through a
`StrategyHost` exactly as the router calls them (a static target per engine, this router's in-flight counts, an
exact prefix index fed by the engines' KV events); peers are modelled from their published algorithms:

- `smg:cache_aware` (SGLang model gateway): an approximate tree of the prompts it routed per worker; if the
  workers' request counts are imbalanced (max - min > 64 and max > 1.5 x min) the least loaded, else the worker
  with the longest match when it covers more than 30% of the prompt, else the worker whose tree is smallest.
- `vllm:power_of_two`: two random workers, the one with fewer requests in flight.

`replay` returns per-request records (target, TTFT, cached tokens, the target's in-flight count and queued prompt
tokens when it was chosen) so hit rate, imbalance and queueing in tokens can be read decision by decision.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.emulator import tokenizer as tok
from agents.emulator.engine import EngineConfig, EngineCore
from agents.emulator.engine import Sequence as Seq
from agents.emulator.kvcache import AllBlocksCleared, BlockRemoved, BlockStored
from agents.emulator.profiles import get_profile
from agents.signals.prefixindex import EVENTS, PrefixIndex
from agents.strategies.base import HEALTHY, RouteRequest, TargetView
from agents.strategies.host import StrategyHost

from .prefix import Conversation, Request

MODEL = "demo-llm"


@dataclass(slots=True)
class Record:
    at: float
    target: int
    prompt: int
    cached: int = 0
    ttft: float = float("nan")
    e2e: float = float("nan")
    inflight_at_pick: int = 0
    queued_tokens_at_pick: int = 0  # prompt tokens not yet prefilled on the target when it was picked
    hashes: int = 0


class Policy:
    """Picks an engine for a request; told when requests finish and what the engines cache."""

    name = "policy"
    now = 0.0  # simulated time, set before every call
    rid = ""  # the id of the request being picked, set before `pick`

    def setup(self, n: int, block_size: int, max_num_seqs: int, profiles: Sequence[str]) -> None:
        self.n = n
        self.block_size = block_size

    def pick(self, hashes: list[int], prompt: int, max_tokens: int, session: str) -> int:
        raise NotImplementedError

    def finished(self, target: int) -> None:
        pass

    def outcome(self, rid: str, target: int, ttft: float, e2e: float, tokens: int) -> None:
        """A request's answer: what the router hands its strategies (`Ranker.learn`)."""

    def kv_events(self, target: int, events: list[Any]) -> None:
        pass


class Ours(Policy):
    """One of our strategies through the strategy host, with static targets as the bench's router has them."""

    def __init__(
        self, strategy: str, factory: Callable[[PrefixIndex], Any], mig: bool = True, learn: bool = False
    ) -> None:
        self.name = strategy
        self.factory = factory
        self.mig = mig
        self.learn = learn  # teach the strategy each answer's TTFT, as the router does (`Ranker.learn`)

    def setup(self, n: int, block_size: int, max_num_seqs: int, profiles: Sequence[str]) -> None:
        super().setup(n, block_size, max_num_seqs, profiles)
        self.index = PrefixIndex(clock=lambda: self.now)
        strat = self.factory(self.index)
        self.host = StrategyHost({self.name: strat}, default=self.name, budget_us=1e9, rng=random.Random(7))
        for i, p in enumerate(profiles):
            mig = get_profile(p).mig_profile if self.mig else ""
            self.host.upsert(TargetView(target_id=f"t{i}", model=MODEL, node=f"n{i}", endpoint=f"emu{i}",
                                        health=HEALTHY, max_concurrency=max_num_seqs, mig_profile=mig))  # fmt: skip
            self.index.ensure(f"emu{i}", EVENTS)
        self.host.refresh()
        self._refreshed = 0.0

    def pick(self, hashes: list[int], prompt: int, max_tokens: int, session: str) -> int:
        if self.now - self._refreshed >= 0.1:  # a router refreshes whenever its view changes: often
            self._refreshed = self.now
            self.host.refresh()
        req = RouteRequest(model=MODEL, prompt_tokens=prompt, max_tokens=max_tokens,
                           request_id=self.rid if self.learn else "")  # fmt: skip
        req.block_hashes, req.session_key = hashes, session
        d = self.host.decide(req, strategy=self.name, k=1)
        tid = d.ranked[0].target.target_id
        self.host.routed(d, req, tid)
        return int(tid[1:])

    def finished(self, target: int) -> None:
        self.host.note_finished(f"t{target}")

    def outcome(self, rid: str, target: int, ttft: float, e2e: float, tokens: int) -> None:
        observe = getattr(self.host.strategies[self.name], "observe_outcome", None)
        if self.learn and observe is not None:
            observe(rid, f"t{target}", ttft, e2e, tokens)

    def kv_events(self, target: int, events: list[Any]) -> None:
        bs = self.index.targets[f"emu{target}"]
        for e in events:
            if isinstance(e, BlockStored):
                bs.add(e.block_hashes)
            elif isinstance(e, BlockRemoved):
                bs.remove(e.block_hashes)
            elif isinstance(e, AllBlocksCleared):
                bs.clear()


class SmgCacheAware(Policy):
    name = "smg:cache_aware"

    def __init__(self, cache_threshold: float = 0.3, abs_threshold: int = 64, rel_threshold: float = 1.5) -> None:
        self.cache_threshold, self.abs_threshold, self.rel_threshold = cache_threshold, abs_threshold, rel_threshold

    def setup(self, n: int, block_size: int, max_num_seqs: int, profiles: Sequence[str]) -> None:
        super().setup(n, block_size, max_num_seqs, profiles)
        self.trees: list[set[int]] = [set() for _ in range(n)]
        self.load = [0] * n
        self.rng = random.Random(7)

    def pick(self, hashes: list[int], prompt: int, max_tokens: int, session: str) -> int:
        lo, hi = min(self.load), max(self.load)
        if hi - lo > self.abs_threshold and hi > lo * self.rel_threshold:
            best = self.load.index(lo)
        else:
            matches = []
            for t in self.trees:
                m = 0
                for h in hashes:
                    if h not in t:
                        break
                    m += 1
                matches.append(m)
            top = max(matches)
            if prompt and top * self.block_size / prompt > self.cache_threshold:
                best = self.rng.choice([i for i, m in enumerate(matches) if m == top])
            else:
                small = min(len(t) for t in self.trees)
                best = self.rng.choice([i for i, t in enumerate(self.trees) if len(t) == small])
        self.trees[best].update(hashes)
        self.load[best] += 1
        return best

    def finished(self, target: int) -> None:
        self.load[target] -= 1


class PowerOfTwo(Policy):
    name = "vllm:power_of_two"

    def setup(self, n: int, block_size: int, max_num_seqs: int, profiles: Sequence[str]) -> None:
        super().setup(n, block_size, max_num_seqs, profiles)
        self.load = [0] * n
        self.rng = random.Random(7)

    def pick(self, hashes: list[int], prompt: int, max_tokens: int, session: str) -> int:
        a, b = self.rng.sample(range(self.n), 2)
        best = a if self.load[a] <= self.load[b] else b
        self.load[best] += 1
        return best

    def finished(self, target: int) -> None:
        self.load[target] -= 1


@dataclass
class Fleet:
    profiles: Sequence[str]
    max_num_seqs: int = 8
    kv_tokens: int = 20_000
    block_size: int = 16
    engines: list[EngineCore] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.engines = [EngineCore(EngineConfig(get_profile(p), max_num_seqs=self.max_num_seqs,
                                                block_size=self.block_size, kv_tokens=self.kv_tokens))
                        for p in self.profiles]  # fmt: skip


def replay(
    fleet_spec: Fleet, policy: Policy, reqs: Sequence[Request], convs: Sequence[Conversation], answer_len: int = 8
) -> list[Record]:
    """Replay `reqs` (open loop) and `convs` (each turn after the previous answer plus think time) on a fresh
    fleet in simulated time; one record per request."""
    fleet = Fleet(fleet_spec.profiles, fleet_spec.max_num_seqs, fleet_spec.kv_tokens, fleet_spec.block_size)
    engines = fleet.engines
    bs = fleet.block_size
    policy.setup(len(engines), bs, fleet.max_num_seqs, fleet.profiles)
    heap: list[tuple[float, int, str, Any]] = []
    tick = 0

    def push(t: float, kind: str, payload: Any) -> None:
        nonlocal tick
        tick += 1
        heapq.heappush(heap, (t, tick, kind, payload))

    for r in reqs:
        push(r.at, "req", (r.messages, r.max_tokens, r.session, None))
    for c in convs:
        push(c.at, "req", ([{"role": "system", "content": c.system}, {"role": "user", "content": c.users[0]}],
                           c.max_tokens, c.session, (c, 0)))  # fmt: skip
    busy = [False] * len(engines)
    records: list[Record] = []
    by_seq: dict[str, tuple[Record, int, Any, list[dict[str, Any]]]] = {}
    answer = " ".join(["okay"] * answer_len) + " "

    def start(i: int, now: float) -> None:
        step = engines[i].schedule()
        busy[i] = step is not None
        if step is not None:
            push(now + step.duration_s, "step", (i, step))

    while heap:
        now, _, kind, payload = heapq.heappop(heap)
        if kind == "req":
            messages, max_tokens, session, conv = payload
            ids = tok.encode_chat(messages)
            hashes = tok.block_hashes(ids, bs)
            policy.now = now
            sid = f"r{len(records) + 1}"
            policy.rid = sid
            target = policy.pick(hashes, len(ids), max_tokens, session)
            eng = engines[target]
            queued = sum(s.prompt_tokens - s.computed for s in eng.waiting) + sum(
                max(0, s.prompt_tokens - s.computed) for s in eng.running
            )
            rec = Record(now, target, len(ids), inflight_at_pick=len(eng.waiting) + len(eng.running),
                         queued_tokens_at_pick=queued, hashes=len(hashes))  # fmt: skip
            records.append(rec)
            by_seq[sid] = (rec, target, conv, messages)
            eng.add(Seq(sid, len(ids), max_tokens, max_tokens, now, token_ids=ids))
            if not busy[target]:
                start(target, now)
        elif kind == "step":
            i, step = payload
            policy.now = now
            for ev in engines[i].complete(step, now):
                rec, target, conv, messages = by_seq[ev.seq.req_id]
                if ev.index == 0:
                    rec.ttft = now - rec.at
                    rec.cached = ev.seq.cached_tokens
                if ev.finished:
                    rec.e2e = now - rec.at
                    policy.finished(target)
                    policy.outcome(ev.seq.req_id, target, rec.ttft, rec.e2e, ev.seq.output_tokens)
                    del by_seq[ev.seq.req_id]
                    if conv is not None:
                        c, turn = conv
                        if turn + 1 < len(c.users):
                            nxt = [*messages, {"role": "assistant", "content": answer},
                                   {"role": "user", "content": c.users[turn + 1]}]  # fmt: skip
                            push(now + c.think_s, "req", (nxt, c.max_tokens, c.session, (c, turn + 1)))
            events = engines[i].kv.drain_events()
            if events:
                policy.kv_events(i, events)
            start(i, now)
    return records


def pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(q * len(s)))]


def summarize(records: Sequence[Record], n_targets: int) -> dict[str, float]:
    ttft = [r.ttft for r in records]
    per = [0] * n_targets
    for r in records:
        per[r.target] += 1
    mean = sum(per) / n_targets
    prompt = sum(r.prompt for r in records)
    return {
        "n": len(records),
        "ttft_p50": pct(ttft, 0.5),
        "ttft_p90": pct(ttft, 0.9),
        "ttft_p99": pct(ttft, 0.99),
        "e2e_p99": pct([r.e2e for r in records], 0.99),
        "hit": sum(r.cached for r in records) / prompt if prompt else 0.0,
        "imbalance": max(per) / mean if mean else float("nan"),
        "queued_tok_mean": sum(r.queued_tokens_at_pick for r in records) / max(1, len(records)),
        "inflight_mean": sum(r.inflight_at_pick for r in records) / max(1, len(records)),
        "per_target": per,  # type: ignore[dict-item]
    }
