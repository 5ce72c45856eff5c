"""Arrival processes and request shapes, drawn from one seeded `random.Random` (the same seed, the same requests).

A request is (arrival time, kind, prompt tokens, output tokens, tenant). Vision and ASR requests are mapped to
the LLM runtime's tokens (image patches and audio frames become prompt tokens), since the emulated runtime serves
one model class.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agents.sim.config import Constant, Dist, Diurnal, Exponential, LogNormal, Mmpp, Poisson, Trace, Uniform, Workload

LLM, VISION, ASR = 0, 1, 2
KIND_NAMES = ("llm", "vision", "asr")


@dataclass(slots=True)
class Arrival:
    t: float
    kind: int
    prompt_tokens: int
    output_tokens: int
    tenant: int


def draw(dist: Dist, rng: random.Random) -> float:
    if isinstance(dist, LogNormal):
        return rng.lognormvariate(dist.mu, dist.sigma)
    if isinstance(dist, Constant):
        return dist.value
    if isinstance(dist, Exponential):
        if dist.mean <= 1.0:
            return 1.0
        # geometric on 1, 2, ... with this mean: the whole-token analogue of the exponential
        return float(math.ceil(math.log(1.0 - rng.random()) / math.log(1.0 - 1.0 / dist.mean)))
    if isinstance(dist, Uniform):
        return rng.uniform(dist.min, dist.max)
    raise TypeError(f"unknown distribution {dist!r}")


def _times_poisson(cfg: Poisson, rng: random.Random) -> Iterator[float]:
    t = 0.0
    while True:
        t += rng.expovariate(cfg.rate_rps)
        yield t


def _times_mmpp(cfg: Mmpp, rng: random.Random) -> Iterator[float]:
    n = len(cfg.rates_rps)
    state = 0
    t = 0.0
    state_end = rng.expovariate(1.0 / cfg.dwell_s[state])
    while True:
        rate = cfg.rates_rps[state]
        nxt = t + rng.expovariate(rate) if rate > 0 else math.inf
        if nxt <= state_end:
            t = nxt
            yield t
            continue
        # memorylessness: the draw past the state's end is discarded and the next state starts fresh
        t = state_end
        state = (state + 1 + rng.randrange(n - 1)) % n
        state_end = t + rng.expovariate(1.0 / cfg.dwell_s[state])


def _times_diurnal(cfg: Diurnal, rng: random.Random) -> Iterator[float]:
    peak = cfg.mean_rps * (1.0 + cfg.amplitude)
    t = 0.0
    two_pi = 2.0 * math.pi
    while True:
        t += rng.expovariate(peak)
        rate = cfg.mean_rps * (1.0 + cfg.amplitude * math.sin(two_pi * (t / cfg.period_s + cfg.phase)))
        if rng.random() * peak <= rate:  # thinning (Lewis and Shedler)
            yield t


def _parse_time(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    text = value.strip().replace("T", " ")
    if "." in text:  # the Azure traces carry 7 fractional digits; datetime takes 6
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(text).timestamp()


@dataclass(slots=True)
class TraceRows:
    times: list[float]  # seconds from the first request
    prompt: list[int]
    output: list[int]
    span_s: float


_TIME_COLS = ("timestamp", "time", "arrival_s", "t")
_PROMPT_COLS = ("contexttokens", "prompt_tokens", "input_tokens")
_OUTPUT_COLS = ("generatedtokens", "output_tokens", "completion_tokens")


def read_trace(path: str | Path) -> TraceRows:
    """Read a CSV trace (Azure LLM inference trace columns TIMESTAMP, ContextTokens, GeneratedTokens, or
    arrival_s, prompt_tokens, output_tokens). Rows are sorted by time; times start at 0."""
    p = Path(path)
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = {name.lower().strip(): name for name in reader.fieldnames or ()}

        def pick(options: tuple[str, ...], what: str) -> str:
            for o in options:
                if o in fields:
                    return fields[o]
            raise ValueError(f"{p}: no {what} column (one of {', '.join(options)})")

        tc, pc, oc = pick(_TIME_COLS, "time"), pick(_PROMPT_COLS, "prompt"), pick(_OUTPUT_COLS, "output")
        rows = [(_parse_time(r[tc]), max(1, int(float(r[pc]))), max(1, int(float(r[oc])))) for r in reader]
    if not rows:
        raise ValueError(f"{p}: the trace has no rows")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    times = [r[0] - t0 for r in rows]
    gap = times[-1] / max(1, len(times) - 1) if len(times) > 1 else 1.0
    return TraceRows(times, [r[1] for r in rows], [r[2] for r in rows], times[-1] + gap)


class Generator:
    """Endless stream of `Arrival`s for one workload; `next()` is O(1) (trace replay: O(1) amortised)."""

    def __init__(self, cfg: Workload, rng: random.Random) -> None:
        self.cfg = cfg
        self.rng = rng
        arrival = cfg.arrival
        self._trace: TraceRows | None = None
        self._times: Iterator[float]
        if isinstance(arrival, Poisson):
            self._times = _times_poisson(arrival, rng)
        elif isinstance(arrival, Mmpp):
            self._times = _times_mmpp(arrival, rng)
        elif isinstance(arrival, Diurnal):
            self._times = _times_diurnal(arrival, rng)
        elif isinstance(arrival, Trace):
            self._trace = read_trace(arrival.path)
            self._trace_i = 0
            self._trace_loop = 0
        mix = cfg.mix
        total = mix.llm + mix.vision + mix.asr
        self._mix_cum = [mix.llm / total, (mix.llm + mix.vision) / total]
        t = cfg.tenants
        weights = [1.0 / (i + 1) ** t.zipf_s for i in range(t.count)]
        acc = 0.0
        self._tenant_cum: list[float] = []
        for w in weights:
            acc += w
            self._tenant_cum.append(acc)

    def _tokens(self, dist: Dist, limit: int) -> int:
        return min(limit, max(1, round(draw(dist, self.rng))))

    def next(self) -> Arrival:
        rng = self.rng
        cfg = self.cfg
        tenant = bisect.bisect_left(self._tenant_cum, rng.random() * self._tenant_cum[-1])
        tr = self._trace
        if tr is not None:
            arrival = cfg.arrival
            assert isinstance(arrival, Trace)
            i = self._trace_i
            if i >= len(tr.times):
                if not arrival.loop:
                    return Arrival(math.inf, LLM, 1, 1, tenant)
                self._trace_loop += 1
                i = 0
            self._trace_i = i + 1
            t = (tr.times[i] + self._trace_loop * tr.span_s) * arrival.time_scale
            p = min(cfg.max_prompt_tokens, tr.prompt[i])
            o = min(cfg.max_output_tokens, tr.output[i])
            return Arrival(t, LLM, p, o, tenant)
        t = next(self._times)
        u = rng.random()
        if u < self._mix_cum[0]:
            kind = LLM
            p = self._tokens(cfg.llm.prompt_tokens, cfg.max_prompt_tokens)
            o = self._tokens(cfg.llm.output_tokens, cfg.max_output_tokens)
        elif u < self._mix_cum[1]:
            kind = VISION
            p = min(cfg.max_prompt_tokens, max(1, round(draw(cfg.vision.pixels, rng) / (28 * 28))))
            o = self._tokens(cfg.vision.output_tokens, cfg.max_output_tokens)
        else:
            kind = ASR
            seconds = max(0.1, draw(cfg.asr.audio_s, rng))
            p = min(cfg.max_prompt_tokens, max(1, round(25 * seconds)))
            o = min(cfg.max_output_tokens, max(1, round(3 * seconds)))
        return Arrival(t, kind, p, o, tenant)
