"""Scraping runtimes over HTTP, and the window between two scrapes that turns counters into rates and lifetime
histograms into recent quantiles."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from agents.signals.runtime.exposition import MetricsParseError, bucket_delta, histogram_quantile
from agents.signals.runtime.flavors import Histo, RuntimeReading, read_runtime
from agents.signals.types import ModelState


class ScrapeError(RuntimeError):
    """The runtime could not be scraped: connection failure, timeout or a non-200 answer."""


def split_url(url: str) -> tuple[str, str]:
    """(base URL of the runtime, its /metrics URL) from either form."""
    url = url.rstrip("/")
    if url.endswith("/metrics"):
        return url[: -len("/metrics")], url
    return url, url + "/metrics"


async def _get(session: aiohttp.ClientSession, url: str, timeout_s: float) -> str:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                raise ScrapeError(f"GET {url}: HTTP {resp.status}")
            return await resp.text()
    except (TimeoutError, aiohttp.ClientError, OSError, UnicodeDecodeError) as e:
        raise ScrapeError(f"GET {url}: {type(e).__name__}: {e}") from e


async def _tgi_model(session: aiohttp.ClientSession, base: str, timeout_s: float) -> str:
    # TGI names its model only in GET /info
    try:
        async with session.get(f"{base}/info", timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status == 200:
                info = await resp.json(content_type=None)
                if isinstance(info, dict) and isinstance(info.get("model_id"), str):
                    return str(info["model_id"])
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        pass
    return ""


async def scrape_readings(
    session: aiohttp.ClientSession, url: str, flavor: str, timeout_s: float, *, model: str = ""
) -> list[RuntimeReading]:
    base, metrics_url = split_url(url)
    text = await _get(session, metrics_url, timeout_s)
    if flavor == "tgi" and not model:
        model = await _tgi_model(session, base, timeout_s)
    return read_runtime(flavor, text, model=model)


async def scrape_runtime(
    session: aiohttp.ClientSession, url: str, flavor: str, timeout_s: float, *, model: str = ""
) -> list[ModelState]:
    """Scrape one runtime once; quantiles cover its lifetime. Raises ScrapeError or MetricsParseError."""
    base, _ = split_url(url)
    return [r.to_state(base) for r in await scrape_readings(session, url, flavor, timeout_s, model=model)]


@dataclass(slots=True)
class _Prev:
    at: float
    reading: RuntimeReading


class RuntimeWindow:
    """Sans-IO: successive readings of one runtime in, ModelStates with rates and recent quantiles out.

    Throughput comes from counter deltas where no gauge exists (vLLM, TGI); TTFT and latency p95 come from the
    histogram observations made since the previous scrape, and are unknown (None) when there were none.
    """

    def __init__(self, endpoint: str = "") -> None:
        self.endpoint = endpoint
        self._prev: dict[str, _Prev] = {}

    def apply(self, readings: list[RuntimeReading], now: float) -> list[ModelState]:
        out = []
        seen = set()
        for r in readings:
            seen.add(r.model)
            state = r.to_state(self.endpoint)
            prev = self._prev.get(r.model)
            if prev is not None and now > prev.at:
                dt = now - prev.at
                if state.tokens_per_s is None:
                    state.tokens_per_s = _rate(r.generation_tokens_total, prev.reading.generation_tokens_total, dt)
                if state.prompt_tokens_per_s is None:
                    state.prompt_tokens_per_s = _rate(r.prompt_tokens_total, prev.reading.prompt_tokens_total, dt)
                state.ttft_p95_s = _recent_p95(r.ttft, prev.reading.ttft, state.ttft_p95_s)
                if r.latency is not None:
                    state.latency_p95_s = _recent_p95(r.latency, prev.reading.latency, state.latency_p95_s)
            self._prev[r.model] = _Prev(now, r)
            out.append(state)
        for gone in set(self._prev) - seen:
            del self._prev[gone]
        return out


def _rate(cur: float | None, prev: float | None, dt: float) -> float | None:
    if cur is None or prev is None or cur < prev:
        return None  # unknown, or the runtime restarted and its counters reset
    return (cur - prev) / dt


def _recent_p95(cur: Histo | None, prev: Histo | None, lifetime: float | None) -> float | None:
    if cur is None:
        return lifetime
    if prev is None:
        return lifetime
    delta = bucket_delta(cur.buckets, prev.buckets)
    if delta is None:
        return lifetime  # restart or new layout: the lifetime figure is all there is
    count = None if cur.count is None or prev.count is None else cur.count - prev.count
    v = histogram_quantile(0.95, delta, count)
    return None if v is None else v * cur.scale


MAX_ADAPTERS = 1024  # adapters taken from one runtime's /v1/models


def parse_adapters(body: object) -> dict[str, str]:
    """Adapter name -> base model from an OpenAI /v1/models answer: vLLM lists each LoRA adapter with the base model
    as its `parent` (the base model's own card has parent null). Raises ValueError on anything else."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ValueError("/v1/models: expected an object with a 'data' list")
    out: dict[str, str] = {}
    for card in data:
        if not isinstance(card, dict):
            raise ValueError("/v1/models: a model card is not an object")
        name, parent = card.get("id"), card.get("parent")
        if isinstance(name, str) and isinstance(parent, str) and name and parent and name != parent:
            if len(out) >= MAX_ADAPTERS:
                raise ValueError(f"/v1/models: more than {MAX_ADAPTERS} adapters")
            out[name] = parent
    return out


def lora_states(readings: list[RuntimeReading], states: list[ModelState], adapters: dict[str, str]) -> list[ModelState]:
    """One ModelState per adapter whose base model the scrape reports: the base model's signals (one queue, one
    batch, one KV cache), the adapter as the model, resident while its requests run or wait there."""
    by_model = {s.model: s for s in states}
    active = {r.model: set(r.lora_running) | set(r.lora_waiting) for r in readings}
    out = []
    for name, parent in sorted(adapters.items()):
        base = by_model.get(parent)
        if base is None or name in by_model:
            continue  # an adapter of a model this scrape does not report, or one shadowing a base model
        out.append(dataclasses.replace(base, model=name, parent=parent, lora_resident=name in active[parent]))
    return out


class RuntimeScraper:
    """Scrapes one runtime repeatedly and keeps the window between scrapes.

    A vLLM runtime with LoRA slots (vllm:lora_requests_info with max_lora > 0) is also asked for its /v1/models on
    every scrape, and each adapter it lists becomes a target of its own (`lora_states`); when that answer fails,
    the adapters last listed stay and `adapters_error` says why.
    """

    def __init__(
        self,
        url: str,
        flavor: str,
        *,
        timeout_s: float = 2.0,
        model: str = "",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.url = url
        self.flavor = flavor
        self.timeout_s = timeout_s
        self.model = model
        self.base, _ = split_url(url)
        self.window = RuntimeWindow(self.base)
        self._clock = clock or time.monotonic
        self.adapters: dict[str, str] = {}  # LoRA adapter -> base model, from the runtime's /v1/models
        self.adapters_error = ""

    async def scrape(self, session: aiohttp.ClientSession) -> list[ModelState]:
        readings = await scrape_readings(session, self.url, self.flavor, self.timeout_s, model=self.model)
        states = self.window.apply(readings, self._clock())
        if not any(r.max_lora for r in readings):
            self.adapters = {}
            return states
        try:
            self.adapters = parse_adapters(await _get_json(session, f"{self.base}/v1/models", self.timeout_s))
            self.adapters_error = ""
        except (ScrapeError, ValueError) as exc:
            self.adapters_error = str(exc)
        return states + lora_states(readings, states, self.adapters)


async def _get_json(session: aiohttp.ClientSession, url: str, timeout_s: float) -> object:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                raise ScrapeError(f"GET {url}: HTTP {resp.status}")
            return await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, OSError, UnicodeDecodeError) as e:
        raise ScrapeError(f"GET {url}: {type(e).__name__}: {e}") from e


__all__ = [
    "MetricsParseError",
    "RuntimeScraper",
    "RuntimeWindow",
    "ScrapeError",
    "lora_states",
    "parse_adapters",
    "scrape_readings",
    "scrape_runtime",
    "split_url",
]
