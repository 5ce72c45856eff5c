"""Per-runtime readers: which series of vLLM, TGI, Triton, SGLang, TorchServe, TF Serving and OVMS carry queue,
batch, KV-cache, throughput and latency, and how to turn them into one `RuntimeReading` per served model.

A series a runtime does not publish stays None; NaN and negative gauges are treated as unknown rather than trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.signals.runtime.exposition import Buckets, MetricIndex, histogram_quantile, parse_exposition
from agents.signals.types import ModelState

FLAVORS = ("vllm", "tgi", "triton", "sglang", "torchserve", "tfserving", "ovms")


@dataclass(frozen=True, slots=True)
class Histo:
    """One model's latency histogram as published, in the runtime's unit, scaled to seconds by `scale`."""

    buckets: Buckets
    count: float | None
    scale: float = 1.0

    def quantile(self, q: float) -> float | None:
        v = histogram_quantile(q, self.buckets, self.count)
        return None if v is None else v * self.scale


@dataclass(slots=True)
class RuntimeReading:
    """What one scrape says about one model, before rates over time are known."""

    model: str
    runtime: str
    revision: str = ""
    requests_waiting: float | None = None
    requests_running: float | None = None
    kv_cache_usage: float | None = None
    tokens_per_s: float | None = None  # a throughput gauge, where the runtime publishes one
    prompt_tokens_per_s: float | None = None
    max_concurrency: int | None = None
    generation_tokens_total: float | None = None  # counters, for rates between scrapes
    prompt_tokens_total: float | None = None
    ttft: Histo | None = None
    latency: Histo | None = None
    latency_p95_direct_s: float | None = None  # from a summary with a published 0.95 quantile
    extra: dict[str, float] = field(default_factory=dict)
    # vllm:lora_requests_info: adapter slots (None: not published; 0: LoRA off) and the adapters of running and
    # waiting requests. The gauge names no model: it speaks for the whole runtime.
    max_lora: int | None = None
    lora_running: tuple[str, ...] = ()
    lora_waiting: tuple[str, ...] = ()

    def to_state(self, endpoint: str = "") -> ModelState:
        """A ModelState with lifetime quantiles (all requests since the runtime started)."""
        return ModelState(
            model=self.model,
            runtime=self.runtime,
            revision=self.revision,
            endpoint=endpoint,
            requests_waiting=self.requests_waiting,
            requests_running=self.requests_running,
            kv_cache_usage=self.kv_cache_usage,
            tokens_per_s=self.tokens_per_s,
            prompt_tokens_per_s=self.prompt_tokens_per_s,
            ttft_p95_s=self.ttft.quantile(0.95) if self.ttft else None,
            latency_p95_s=(self.latency.quantile(0.95) if self.latency else None) or self.latency_p95_direct_s,
            max_concurrency=self.max_concurrency,
            max_loras=self.max_lora or None,
            loras_active=len(set(self.lora_running) | set(self.lora_waiting)) if self.max_lora else None,
        )


def _ok(v: float) -> bool:
    return not math.isnan(v) and not math.isinf(v) and v >= 0


def _by(
    idx: MetricIndex,
    name: str,
    key: str,
    agg: str = "sum",
    where: Callable[[dict[str, str]], bool] | None = None,
) -> dict[str, float]:
    """Values of one series per `key` label, aggregated over the other labels (sum or max)."""
    out: dict[str, float] = {}
    for s in idx.get(name):
        if key and key not in s.labels:
            continue
        if where is not None and not where(s.labels):
            continue
        if not _ok(s.value):
            continue
        k = s.labels.get(key, "") if key else ""
        if k in out:
            out[k] = out[k] + s.value if agg == "sum" else max(out[k], s.value)
        else:
            out[k] = s.value
    return out


def _hist(idx: MetricIndex, base: str, key: str, scale: float = 1.0) -> dict[str, Histo]:
    return {k: Histo(b, c, scale) for k, (b, c, _) in idx.histogram(base, key).items() if b}


def _models(idx: MetricIndex, prefix: str, key: str) -> list[str]:
    seen: dict[str, None] = {}
    for name, samples in idx.by_name.items():
        if name.startswith(prefix):
            for s in samples:
                if s.labels.get(key):
                    seen[s.labels[key]] = None
    return list(seen)


def _adapters(value: str) -> tuple[str, ...]:
    return tuple(sorted({a for a in (x.strip() for x in value.split(",")) if a}))


def _lora_info(idx: MetricIndex) -> tuple[int | None, tuple[str, ...], tuple[str, ...]]:
    """(max_lora, running adapters, waiting adapters) from vllm:lora_requests_info.

    vLLM sets the gauge to the current time on a fresh label set and leaves the old label sets behind, so the sample
    with the latest time is the present one. A malformed max_lora counts as not published."""
    latest = None
    for s in idx.get("vllm:lora_requests_info"):
        if not math.isnan(s.value) and (latest is None or s.value >= latest.value):
            latest = s
    if latest is None:
        return None, (), ()
    try:
        slots = int(latest.labels.get("max_lora", ""))
    except ValueError:
        return None, (), ()
    if slots < 0:
        return None, (), ()
    lb = latest.labels
    return slots, _adapters(lb.get("running_lora_adapters", "")), _adapters(lb.get("waiting_lora_adapters", ""))


def _read_vllm(idx: MetricIndex, model_hint: str) -> list[RuntimeReading]:
    key = "model_name"
    max_lora, lora_running, lora_waiting = _lora_info(idx)
    waiting = _by(idx, "vllm:num_requests_waiting", key)
    running = _by(idx, "vllm:num_requests_running", key)
    kv = _by(idx, "vllm:kv_cache_usage_perc", key, "max") or _by(idx, "vllm:gpu_cache_usage_perc", key, "max")
    gen = _by(idx, "vllm:generation_tokens_total", key)
    prompt = _by(idx, "vllm:prompt_tokens_total", key)
    gen_tps = _by(idx, "vllm:avg_generation_throughput_toks_per_s", key)  # removed in later releases
    prompt_tps = _by(idx, "vllm:avg_prompt_throughput_toks_per_s", key)
    ttft = _hist(idx, "vllm:time_to_first_token_seconds", key)
    e2e = _hist(idx, "vllm:e2e_request_latency_seconds", key)
    return [
        RuntimeReading(
            model=m,
            runtime="vllm",
            requests_waiting=waiting.get(m),
            requests_running=running.get(m),
            kv_cache_usage=_frac(kv.get(m)),
            tokens_per_s=gen_tps.get(m),
            prompt_tokens_per_s=prompt_tps.get(m),
            generation_tokens_total=gen.get(m),
            prompt_tokens_total=prompt.get(m),
            ttft=ttft.get(m),
            latency=e2e.get(m),
            max_lora=max_lora,
            lora_running=lora_running,
            lora_waiting=lora_waiting,
        )
        for m in _models(idx, "vllm:", key)
    ]


def _first_rank(labels: dict[str, str]) -> bool:
    # newer SGLang repeats each gauge per tensor-parallel rank; rank 0 speaks for the group
    return labels.get("tp_rank", "0") == "0"


def _read_sglang(idx: MetricIndex, model_hint: str) -> list[RuntimeReading]:
    key = "model_name"
    waiting = _by(idx, "sglang:num_queue_reqs", key, where=_first_rank)
    running = _by(idx, "sglang:num_running_reqs", key, where=_first_rank)
    kv = _by(idx, "sglang:token_usage", key, "max", where=_first_rank)
    tps = _by(idx, "sglang:gen_throughput", key, where=_first_rank)
    gen = _by(idx, "sglang:generation_tokens_total", key, where=_first_rank)
    prompt = _by(idx, "sglang:prompt_tokens_total", key, where=_first_rank)
    ttft = _hist(idx, "sglang:time_to_first_token_seconds", key)
    e2e = _hist(idx, "sglang:e2e_request_latency_seconds", key)
    return [
        RuntimeReading(
            model=m,
            runtime="sglang",
            requests_waiting=waiting.get(m),
            requests_running=running.get(m),
            kv_cache_usage=_frac(kv.get(m)),
            tokens_per_s=tps.get(m),
            generation_tokens_total=gen.get(m),
            prompt_tokens_total=prompt.get(m),
            ttft=ttft.get(m),
            latency=e2e.get(m),
        )
        for m in _models(idx, "sglang:", key)
    ]


def _read_tgi(idx: MetricIndex, model_hint: str) -> list[RuntimeReading]:
    # TGI serves one model and names it nowhere in /metrics (GET /info has model_id): the caller passes it in.
    if not any(n.startswith("tgi_") for n in idx.names()):
        return []
    one = _by(idx, "tgi_queue_size", "")
    running = _by(idx, "tgi_batch_current_size", "")
    gen = _by(idx, "tgi_request_generated_tokens_sum", "")
    prompt = _by(idx, "tgi_request_input_length_sum", "")
    latency = _hist(idx, "tgi_request_duration", "")
    return [
        RuntimeReading(
            model=model_hint,
            runtime="tgi",
            requests_waiting=one.get(""),
            requests_running=running.get(""),
            generation_tokens_total=gen.get(""),
            prompt_tokens_total=prompt.get(""),
            latency=latency.get(""),
        )
    ]


def _read_triton(idx: MetricIndex, model_hint: str) -> list[RuntimeReading]:
    key = "model"

    def req(t: str) -> dict[str, float]:
        return _by(idx, "nv_trt_llm_request_metrics", key, where=lambda lb: lb.get("request_type") == t)

    def blocks(t: str) -> dict[str, float]:
        return _by(idx, "nv_trt_llm_kv_cache_block_metrics", key, where=lambda lb: lb.get("kv_cache_block_type") == t)

    pending = _by(idx, "nv_inference_pending_request_count", key)
    trt_wait, active, max_req = req("waiting"), req("active"), req("max")
    used, total = blocks("used"), blocks("max")
    ttft = _hist(idx, "nv_inference_first_response_histogram_ms", key, scale=1e-3)
    p95 = _by(idx, "nv_inference_request_summary_us", key, where=lambda lb: lb.get("quantile") == "0.95")
    versions: dict[str, str] = {}
    for name, samples in idx.by_name.items():
        if name.startswith("nv_inference_") or name.startswith("nv_trt_llm_"):
            for s in samples:
                if s.labels.get(key):
                    versions.setdefault(s.labels[key], s.labels.get("version", ""))
    out = []
    for m, version in versions.items():
        kv = used[m] / total[m] if m in used and total.get(m) else None
        out.append(
            RuntimeReading(
                model=m,
                runtime="triton",
                revision=version,
                requests_waiting=trt_wait.get(m, pending.get(m)),
                requests_running=active.get(m),
                kv_cache_usage=_frac(kv),
                max_concurrency=_int(max_req.get(m)),
                ttft=ttft.get(m),
                latency_p95_direct_s=p95[m] * 1e-6 if m in p95 else None,
            )
        )
    return out


def _read_torchserve(idx: MetricIndex, model_hint: str) -> list[RuntimeReading]:
    # TorchServe publishes cumulative request counts and latency sums per model, no queue depth or quantiles.
    key = "model_name"
    versions: dict[str, str] = {}
    for name in ("ts_inference_requests_total", "ts_inference_latency_microseconds", "ts_queue_latency_microseconds"):
        for s in idx.get(name):
            if s.labels.get(key):
                versions.setdefault(s.labels[key], s.labels.get("model_version", ""))
    requests = _by(idx, "ts_inference_requests_total", key)
    latency_us = _by(idx, "ts_inference_latency_microseconds", key)
    queue_us = _by(idx, "ts_queue_latency_microseconds", key)
    out = []
    for m, v in versions.items():
        extra = {"requests_total": requests.get(m, 0.0), "latency_us_total": latency_us.get(m, 0.0),
                 "queue_us_total": queue_us.get(m, 0.0)}  # fmt: skip
        out.append(RuntimeReading(model=m, runtime="torchserve", revision="" if v == "default" else v, extra=extra))
    return out


def _read_tfserving(idx: MetricIndex, model_hint: str) -> list[RuntimeReading]:
    key = "model_name"
    latency = _hist(idx, ":tensorflow:serving:request_latency", key, scale=1e-6)
    models = _models(idx, ":tensorflow:serving:", key)
    return [RuntimeReading(model=m, runtime="tfserving", latency=latency.get(m)) for m in models]


def _read_ovms(idx: MetricIndex, model_hint: str) -> list[RuntimeReading]:
    key = "name"
    current = _by(idx, "ovms_current_requests", key)
    active = _by(idx, "ovms_infer_req_active", key)
    nireq = _by(idx, "ovms_infer_req_queue_size", key)
    latency = _hist(idx, "ovms_request_time_us", key, scale=1e-6)
    versions: dict[str, str] = {}
    for name, samples in idx.by_name.items():
        if name.startswith("ovms_"):
            for s in samples:
                if s.labels.get(key):
                    versions.setdefault(s.labels[key], s.labels.get("version", ""))
    out = []
    for m, v in versions.items():
        running = active.get(m, current.get(m))
        # requests in process beyond the infer requests they hold are waiting for one
        waiting = max(0.0, current[m] - active[m]) if m in current and m in active else None
        out.append(
            RuntimeReading(
                model=m,
                runtime="ovms",
                revision=v,
                requests_waiting=waiting,
                requests_running=running,
                max_concurrency=_int(nireq.get(m)),
                latency=latency.get(m),
            )
        )
    return out


def _frac(v: float | None) -> float | None:
    if v is None or not _ok(v):
        return None
    return min(v, 1.0)


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


_READERS: dict[str, Callable[[MetricIndex, str], list[RuntimeReading]]] = {
    "vllm": _read_vllm,
    "tgi": _read_tgi,
    "triton": _read_triton,
    "sglang": _read_sglang,
    "torchserve": _read_torchserve,
    "tfserving": _read_tfserving,
    "ovms": _read_ovms,
}


def read_runtime(flavor: str, text: str, *, model: str = "") -> list[RuntimeReading]:
    """Parse one scrape into readings; `model` names the model for runtimes whose metrics carry no model label."""
    reader = _READERS.get(flavor)
    if reader is None:
        raise ValueError(f"unknown runtime flavor {flavor!r}; known: {', '.join(FLAVORS)}")
    idx = parse_exposition(text)
    return reader(idx, model or flavor)


def parse_metrics(flavor: str, text: str, *, endpoint: str = "", model: str = "") -> list[ModelState]:
    """One ModelState per served model, from one /metrics text (quantiles over the runtime's lifetime)."""
    return [r.to_state(endpoint) for r in read_runtime(flavor, text, model=model)]
