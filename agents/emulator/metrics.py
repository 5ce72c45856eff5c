"""Prometheus exposition of the emulator, in the exact names, labels, buckets and text layout of each runtime.

vLLM and SGLang expose through prometheus_client in multiprocess mode (labels sorted, `le` first among them, no
`_created` series); TGI through the Rust metrics-exporter-prometheus (TYPE lines only, no `_total` suffix, a blank
line between families); Triton through prometheus-cpp (HELP and TYPE, `_count`/`_sum` before the buckets), with
the TensorRT-LLM backend's `nv_trt_llm_*` gauges that carry its queue and KV-cache state.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

from agents.emulator.engine import EngineCore, Step
from agents.emulator.engine import Sequence as Seq
from agents.emulator.profiles import GpuProfile

FLAVORS = ("vllm", "vllm-v0", "tgi", "triton", "sglang")

# vllm/v1/metrics/loggers.py
VLLM_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                     20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]  # fmt: skip
VLLM_ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                    40.0, 80.0]  # fmt: skip
VLLM_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                        240.0, 480.0, 960.0, 1920.0, 7680.0]  # fmt: skip
VLLM_ITERATION_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
# sglang/srt/metrics/collector.py (the buckets of the published sample)
SGLANG_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                       15.0, 20.0, 25.0, 30.0]  # fmt: skip
SGLANG_E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0]
SGLANG_TPOT_BUCKETS = [0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                       0.75, 1.0, 2.5]  # fmt: skip


def _tgi_duration_buckets() -> list[float]:
    # text-generation-inference router/src/server.rs: 35 buckets, starting at 0.0001 and multiplied by 1.5 each
    # time (iteratively, so the float text matches the Rust exporter's)
    out, value = [], 0.0001
    for _ in range(35):
        value *= 1.5
        out.append(value)
    return out


TGI_DURATION_BUCKETS = _tgi_duration_buckets()
TRITON_FIRST_RESPONSE_MS_BUCKETS = [100.0, 500.0, 2000.0, 5000.0]


def buckets_1_2_5(max_value: int) -> list[float]:
    """vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to max_value."""
    out: list[float] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exponent
            if v > max_value:
                return out
            out.append(float(v))
        exponent += 1


class Histogram:
    """A cumulative histogram with fixed upper bounds (the +Inf bucket is implicit)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.bounds):
            if value <= b:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        out, acc = [], 0
        for b, c in zip([*self.bounds, math.inf], self.counts, strict=True):
            acc += c
            out.append((b, acc))
        return out


def _num(v: float) -> str:
    """Shortest round-trip text of a number, integral values without a fraction (Rust and C++ exporters)."""
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    parts = [f'{k}="{v}"' for k, v in pairs]
    return "{" + ",".join(parts) + "}" if parts else ""


@dataclass
class RequestErrors:
    """Requests refused before they reached the engine, by reason."""

    by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


class RuntimeMetrics:
    """Engine observer that keeps every series the chosen runtime exposes, and renders them."""

    def __init__(self, flavor: str, model: str, profile: GpuProfile, max_model_len: int, max_num_seqs: int) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}; known: {', '.join(FLAVORS)}")
        self.flavor = flavor
        self.model = model
        self.profile = profile
        self.max_num_seqs = max_num_seqs
        self.started = time.time()
        self.errors = RequestErrors()
        self.finished: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.iterations = 0
        self.max_tokens_param = Histogram(buckets_1_2_5(max_model_len))
        self.prompt_len = Histogram(buckets_1_2_5(max_model_len))
        self.gen_len = Histogram(buckets_1_2_5(max_model_len))
        self.iteration_tokens = Histogram(VLLM_ITERATION_BUCKETS)
        if flavor == "sglang":
            self.ttft = Histogram(SGLANG_TTFT_BUCKETS)
            self.itl = Histogram(SGLANG_TPOT_BUCKETS)
            self.e2e = Histogram(SGLANG_E2E_BUCKETS)
        elif flavor == "tgi":
            self.ttft = Histogram(TGI_DURATION_BUCKETS)
            self.itl = Histogram(TGI_DURATION_BUCKETS)  # tgi_request_mean_time_per_token_duration
            self.e2e = Histogram(TGI_DURATION_BUCKETS)
        elif flavor == "triton":
            self.ttft = Histogram(TRITON_FIRST_RESPONSE_MS_BUCKETS)  # in milliseconds
            self.itl = Histogram([])
            self.e2e = Histogram([])
        else:
            self.ttft = Histogram(VLLM_TTFT_BUCKETS)
            self.itl = Histogram(VLLM_ITL_BUCKETS)
            self.e2e = Histogram(VLLM_LATENCY_BUCKETS)
        self.queue = Histogram(TGI_DURATION_BUCKETS if flavor == "tgi" else VLLM_LATENCY_BUCKETS)
        self.inference = Histogram(TGI_DURATION_BUCKETS if flavor == "tgi" else VLLM_LATENCY_BUCKETS)
        self.prefill = Histogram(VLLM_LATENCY_BUCKETS)
        self.decode = Histogram(VLLM_LATENCY_BUCKETS)
        self.batch_forward = {m: Histogram(TGI_DURATION_BUCKETS) for m in ("prefill", "decode")}
        self.batch_count = {"prefill": 0, "decode": 0}
        self.batch_next_size = Histogram([float(i) for i in range(1, 1025)])
        # Triton cumulative microsecond counters
        self.triton_request_us = 0.0
        self.triton_queue_us = 0.0
        self.triton_infer_us = 0.0
        self.triton_exec_count = 0
        self.triton_inference_count = 0
        self.energy_j = 0.0

    # -- observer --------------------------------------------------------------------------------------------
    def on_arrival(self, seq: Seq) -> None:
        self.max_tokens_param.observe(seq.max_tokens)

    def on_first_token(self, seq: Seq, now: float) -> None:
        self.generation_tokens += 1
        ttft = now - seq.arrival
        self.ttft.observe(ttft * 1000.0 if self.flavor == "triton" else ttft)

    def on_token(self, seq: Seq, itl_s: float) -> None:
        self.generation_tokens += 1
        if self.flavor != "tgi":
            self.itl.observe(itl_s)

    def on_finished(self, seq: Seq, now: float) -> None:
        reason = seq.finish_reason or "abort"
        self.finished[reason] = self.finished.get(reason, 0) + 1
        e2e = now - seq.arrival
        start = seq.first_scheduled if seq.first_scheduled is not None else now
        if reason == "abort" and self.flavor != "vllm":
            return
        self.e2e.observe(e2e)
        self.queue.observe(start - seq.arrival)
        self.inference.observe(now - start)
        self.prompt_len.observe(seq.prompt_tokens)
        self.gen_len.observe(seq.output_tokens)
        if seq.first_token_at is not None:
            self.prefill.observe(seq.first_token_at - start)
            self.decode.observe(now - seq.first_token_at)
            if self.flavor == "tgi" and seq.output_tokens > 1:
                self.itl.observe((now - seq.first_token_at) / (seq.output_tokens - 1))
        self.triton_request_us += e2e * 1e6
        self.triton_queue_us += (start - seq.arrival) * 1e6
        self.triton_infer_us += (now - start) * 1e6
        self.triton_inference_count += 1

    def on_iteration(self, step: Step) -> None:
        self.iterations += 1
        self.iteration_tokens.observe(step.num_tokens)
        self.prompt_tokens += step.prefill_tokens
        method = "prefill" if step.prefill_tokens else "decode"
        self.batch_count[method] += 1
        self.batch_forward[method].observe(step.duration_s)
        self.batch_next_size.observe(len(step.work))
        self.triton_exec_count += 1
        self.energy_j += step.duration_s * self.profile.power_limit_w * 0.8

    def on_preempted(self, seq: Seq) -> None:
        self.preemptions += 1

    # -- rendering -------------------------------------------------------------------------------------------
    def render(self, core: EngineCore | None, *, running: int, waiting: int, kv_usage: float) -> str:
        if self.flavor in ("vllm", "vllm-v0"):
            return self._render_vllm(running, waiting, kv_usage, legacy=self.flavor == "vllm-v0", core=core)
        if self.flavor == "sglang":
            return self._render_sglang(running, waiting, kv_usage, core)
        if self.flavor == "tgi":
            return self._render_tgi(running, waiting, core)
        return self._render_triton(running, waiting, kv_usage, core)

    # prometheus_client multiprocess layout (vLLM, SGLang)
    def _py_family(self, out: list[str], name: str, kind: str, help_: str) -> None:
        if kind == "counter" and not name.endswith("_total"):
            name += "_total"  # prometheus_client names a counter's family after its sample in text format 0.0.4
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    def _py_sample(self, out: list[str], name: str, labels: dict[str, str], value: float) -> None:
        out.append(f"{name}{_labels(sorted(labels.items()))} {floatToGoString(value)}")

    def _py_hist(self, out: list[str], name: str, help_: str, h: Histogram, labels: dict[str, str]) -> None:
        self._py_family(out, name, "histogram", help_)
        self._py_sample(out, f"{name}_sum", labels, h.sum)
        for bound, acc in h.cumulative():
            self._py_sample(out, f"{name}_bucket", {**labels, "le": floatToGoString(bound)}, acc)
        self._py_sample(out, f"{name}_count", labels, h.count)

    def _render_vllm(self, running: int, waiting: int, kv: float, *, legacy: bool, core: EngineCore | None) -> str:
        out: list[str] = []
        m = {"model_name": self.model}
        blocks = core.config.num_blocks if core else 0
        block_size = core.config.block_size if core else 16
        out.append("# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig")
        out.append("# TYPE vllm:cache_config_info gauge")
        info = {
            "block_size": str(block_size),
            "cache_dtype": "auto",
            "enable_prefix_caching": "False" if legacy else "True",
            "gpu_memory_utilization": "0.9",
            "num_cpu_blocks": "0",
            "num_gpu_blocks": str(blocks),
        }
        self._py_sample(out, "vllm:cache_config_info", info, 1.0)
        self._py_family(out, "vllm:num_requests_running", "gauge", "Number of requests in model execution batches.")
        self._py_sample(out, "vllm:num_requests_running", m, running)
        self._py_family(out, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.")
        self._py_sample(out, "vllm:num_requests_waiting", m, waiting)
        if core is not None and core.config.max_loras > 0:
            # as vLLM: one sample whose labels name the adapters in use and whose value is the time it was taken
            run_l, wait_l = core.lora_adapters()
            self._py_family(out, "vllm:lora_requests_info", "gauge", "Running stats on lora requests.")
            lora = {"max_lora": str(core.config.max_loras), "running_lora_adapters": ",".join(run_l),
                    "waiting_lora_adapters": ",".join(wait_l)}  # fmt: skip
            self._py_sample(out, "vllm:lora_requests_info", lora, time.time())
        if legacy:
            self._py_family(out, "vllm:num_requests_swapped", "gauge", "Number of requests swapped to CPU.")
            self._py_sample(out, "vllm:num_requests_swapped", m, 0)
            self._py_family(out, "vllm:gpu_cache_usage_perc", "gauge", "GPU KV-cache usage. 1 means 100 percent usage.")
            self._py_sample(out, "vllm:gpu_cache_usage_perc", m, kv)
            self._py_family(out, "vllm:cpu_cache_usage_perc", "gauge", "CPU KV-cache usage. 1 means 100 percent usage.")
            self._py_sample(out, "vllm:cpu_cache_usage_perc", m, 0.0)
        else:
            self._py_family(out, "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.")
            self._py_sample(out, "vllm:kv_cache_usage_perc", m, kv)
            self._py_family(
                out,
                "vllm:prefix_cache_queries",
                "counter",
                "Prefix cache queries, in terms of number of queried tokens.",
            )
            self._py_sample(out, "vllm:prefix_cache_queries_total", m, core.kv.stats.queries if core else 0)
            self._py_family(
                out, "vllm:prefix_cache_hits", "counter", "Prefix cache hits, in terms of number of cached tokens."
            )
            self._py_sample(out, "vllm:prefix_cache_hits_total", m, core.kv.stats.hits if core else 0)
        self._py_family(out, "vllm:num_preemptions", "counter", "Cumulative number of preemption from the engine.")
        self._py_sample(out, "vllm:num_preemptions_total", m, self.preemptions)
        self._py_family(out, "vllm:prompt_tokens", "counter", "Number of prefill tokens processed.")
        self._py_sample(out, "vllm:prompt_tokens_total", m, self.prompt_tokens)
        self._py_family(out, "vllm:generation_tokens", "counter", "Number of generation tokens processed.")
        self._py_sample(out, "vllm:generation_tokens_total", m, self.generation_tokens)
        self._py_family(out, "vllm:request_success", "counter", "Count of successfully processed requests.")
        for reason in ("stop", "length", "abort"):
            self._py_sample(out, "vllm:request_success_total", {**m, "finished_reason": reason}, self.finished[reason])
        self._py_hist(
            out, "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
            self.iteration_tokens, m,
        )  # fmt: skip
        self._py_hist(out, "vllm:request_prompt_tokens", "Number of prefill tokens processed.", self.prompt_len, m)
        self._py_hist(out, "vllm:request_generation_tokens", "Number of generation tokens processed.", self.gen_len, m)
        self._py_hist(
            out, "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
            self.max_tokens_param, m,
        )  # fmt: skip
        self._py_hist(
            out, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft, m
        )
        itl_name = "vllm:time_per_output_token_seconds" if legacy else "vllm:inter_token_latency_seconds"
        self._py_hist(out, itl_name, "Histogram of inter-token latency in seconds.", self.itl, m)
        self._py_hist(
            out, "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", self.e2e, m
        )
        self._py_hist(
            out, "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
            self.queue, m,
        )  # fmt: skip
        self._py_hist(
            out, "vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.",
            self.inference, m,
        )  # fmt: skip
        self._py_hist(
            out, "vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.",
            self.prefill, m,
        )  # fmt: skip
        self._py_hist(
            out, "vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.",
            self.decode, m,
        )  # fmt: skip
        return "\n".join(out) + "\n"

    def _render_sglang(self, running: int, waiting: int, kv: float, core: EngineCore | None) -> str:
        out: list[str] = []
        m = {"model_name": self.model}
        used = int(kv * core.max_model_len) if core else 0
        elapsed = max(time.time() - self.started, 1e-9)
        self._py_family(out, "sglang:prompt_tokens_total", "counter", "Number of prefill tokens processed.")
        self._py_sample(out, "sglang:prompt_tokens_total", m, self.prompt_tokens)
        self._py_family(out, "sglang:generation_tokens_total", "counter", "Number of generation tokens processed.")
        self._py_sample(out, "sglang:generation_tokens_total", m, self.generation_tokens)
        self._py_family(out, "sglang:token_usage", "gauge", "The token usage")
        self._py_sample(out, "sglang:token_usage", m, round(kv, 2))
        self._py_family(out, "sglang:cache_hit_rate", "gauge", "The cache hit rate")
        stats = core.kv.stats if core else None
        self._py_sample(out, "sglang:cache_hit_rate", m, stats.hits / stats.queries if stats and stats.queries else 0.0)
        self._py_hist(
            out, "sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft, m
        )
        self._py_hist(
            out, "sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
            self.e2e, m,
        )  # fmt: skip
        self._py_hist(
            out, "sglang:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
            self.itl, m,
        )  # fmt: skip
        self._py_family(out, "sglang:num_running_reqs", "gauge", "The number of running requests")
        self._py_sample(out, "sglang:num_running_reqs", m, running)
        self._py_family(out, "sglang:num_used_tokens", "gauge", "The number of used tokens")
        self._py_sample(out, "sglang:num_used_tokens", m, used)
        self._py_family(out, "sglang:gen_throughput", "gauge", "The generate throughput (token/s)")
        self._py_sample(out, "sglang:gen_throughput", m, self.generation_tokens / elapsed)
        self._py_family(out, "sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue")
        self._py_sample(out, "sglang:num_queue_reqs", m, waiting)
        return "\n".join(out) + "\n"

    # metrics-exporter-prometheus layout (TGI)
    def _render_tgi(self, running: int, waiting: int, core: EngineCore | None) -> str:
        blocks: list[list[str]] = []

        def scalar(name: str, kind: str, value: float, labels: Sequence[tuple[str, str]] = ()) -> None:
            blocks.append([f"# TYPE {name} {kind}", f"{name}{_labels(labels)} {_num(value)}"])

        def multi(name: str, kind: str, rows: Sequence[tuple[Sequence[tuple[str, str]], float]]) -> None:
            blocks.append([f"# TYPE {name} {kind}"] + [f"{name}{_labels(lb)} {_num(v)}" for lb, v in rows])

        def hist(name: str, h: Histogram, labels: Sequence[tuple[str, str]] = ()) -> list[str]:
            lines = [f"{name}_bucket{_labels([*labels, ('le', _num(b))])} {acc}" for b, acc in h.cumulative()]
            lines.append(f"{name}_sum{_labels(labels)} {_num(h.sum)}")
            lines.append(f"{name}_count{_labels(labels)} {h.count}")
            return lines

        done = self.finished["stop"] + self.finished["length"]
        max_tokens = core.config.max_num_batched_tokens if core else 0
        scalar("tgi_request_count", "counter", done + self.finished["abort"] + self.errors.total)
        scalar("tgi_request_success", "counter", done)
        if self.errors.total:
            multi(
                "tgi_request_failure", "counter", [([("err", r)], n) for r, n in sorted(self.errors.by_reason.items())]
            )
        scalar("tgi_queue_size", "gauge", waiting)
        scalar("tgi_batch_current_size", "gauge", running)
        scalar("tgi_batch_current_max_tokens", "gauge", max_tokens)
        multi("tgi_batch_inference_count", "counter", [([("method", k)], v) for k, v in self.batch_count.items()])
        multi("tgi_batch_inference_success", "counter", [([("method", k)], v) for k, v in self.batch_count.items()])
        for name, h in (
            ("tgi_request_duration", self.e2e),
            ("tgi_request_queue_duration", self.queue),
            ("tgi_request_inference_duration", self.inference),
            ("tgi_request_mean_time_per_token_duration", self.itl),
            ("tgi_request_input_length", self.prompt_len),
            ("tgi_request_generated_tokens", self.gen_len),
            ("tgi_request_max_new_tokens", self.max_tokens_param),
            ("tgi_batch_next_size", self.batch_next_size),
        ):
            blocks.append([f"# TYPE {name} histogram", *hist(name, h)])
        fwd = ["# TYPE tgi_batch_forward_duration histogram"]
        for method, h in self.batch_forward.items():
            fwd += hist("tgi_batch_forward_duration", h, [("method", method)])
        blocks.append(fwd)
        return "\n\n".join("\n".join(b) for b in blocks) + "\n"

    # prometheus-cpp layout (Triton + TensorRT-LLM backend)
    def _render_triton(self, running: int, waiting: int, kv: float, core: EngineCore | None) -> str:
        out: list[str] = []
        mv = [("model", self.model), ("version", "1")]

        def fam(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        def gauge_rows(name: str, help_: str, key: str, rows: Sequence[tuple[str, float]], kind: str = "gauge") -> None:
            fam(name, kind, help_)
            for label, v in rows:
                labels = sorted([*mv, (key, label)])
                out.append(f"{name}{_labels(labels)} {_num(v)}")

        blocks = core.config.num_blocks if core else 0
        used = round(kv * blocks)
        block_size = core.config.block_size if core else 64
        max_seqs = self.max_num_seqs
        scheduled = len(core.running) if core else running
        context = sum(1 for s in core.running if s.context - s.computed > 1) if core else 0
        gauge_rows(
            "nv_trt_llm_request_metrics", "TRT LLM request metrics", "request_type",
            [("waiting", waiting), ("context", context), ("scheduled", scheduled), ("max", max_seqs),
             ("active", running)],
        )  # fmt: skip
        gauge_rows(
            "nv_trt_llm_runtime_memory_metrics", "TRT LLM runtime memory metrics", "memory_type",
            [("pinned", 0), ("gpu", self.profile.memory_bytes * 0.9 - blocks * block_size * 131_072), ("cpu", 0)],
        )  # fmt: skip
        gauge_rows(
            "nv_trt_llm_kv_cache_block_metrics", "TRT LLM KV cache block metrics", "kv_cache_block_type",
            [("fraction", kv), ("tokens_per", block_size), ("used", used), ("free", blocks - used),
             ("max", blocks)],
        )  # fmt: skip
        gauge_rows(
            "nv_trt_llm_inflight_batcher_metrics", "TRT LLM inflight_batcher-specific metrics",
            "inflight_batcher_specific_metric",
            [("micro_batch_id", 0), ("generation_requests", running - context),
             ("total_context_tokens", sum(s.context - s.computed for s in core.running if s.context - s.computed > 1)
              if core else 0)],
        )  # fmt: skip
        gauge_rows(
            "nv_trt_llm_general_metrics", "General TRT LLM metrics", "general_type",
            [("iteration_counter", self.iterations), ("timestamp", int(time.time()))],
        )  # fmt: skip
        success = self.finished["stop"] + self.finished["length"]
        for name, kind, help_, value in (
            ("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes",
             success),
            ("nv_inference_request_failure", "counter", "Number of failed inference requests, all batch sizes",
             self.errors.total + self.finished["abort"]),
            ("nv_inference_count", "counter", "Number of inferences performed (does not include cached requests)",
             self.triton_inference_count),
            ("nv_inference_exec_count", "counter",
             "Number of model executions performed (does not include cached requests)", self.triton_exec_count),
            ("nv_inference_request_duration_us", "counter",
             "Cumulative inference request duration in microseconds (includes cached requests)",
             self.triton_request_us),
            ("nv_inference_queue_duration_us", "counter",
             "Cumulative inference queuing duration in microseconds (includes cached requests)", self.triton_queue_us),
            ("nv_inference_compute_input_duration_us", "counter",
             "Cumulative compute input duration in microseconds (does not include cached requests)", 0),
            ("nv_inference_compute_infer_duration_us", "counter",
             "Cumulative compute inference duration in microseconds (does not include cached requests)",
             self.triton_infer_us),
            ("nv_inference_compute_output_duration_us", "counter",
             "Cumulative inference compute output duration in microseconds (does not include cached requests)", 0),
            ("nv_inference_pending_request_count", "gauge",
             "Instantaneous number of pending requests awaiting execution per-model.", waiting),
        ):  # fmt: skip
            fam(name, kind, help_)
            out.append(f"{name}{_labels(mv)} {_num(round(value))}")
        name = "nv_inference_first_response_histogram_ms"
        fam(name, "histogram", "Duration from request to first response in milliseconds")
        out.append(f"{name}_count{_labels(mv)} {self.ttft.count}")
        out.append(f"{name}_sum{_labels(mv)} {_num(round(self.ttft.sum))}")
        for bound, acc in self.ttft.cumulative():
            out.append(f"{name}_bucket{_labels([*mv, ('le', _num(bound))])} {acc}")
        gpu = [("gpu_uuid", gpu_uuid_for(self.model, self.profile))]
        util = min(1.0, running / max(1, max_seqs) * 4)
        for name, help_, value in (
            ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", util),
            ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", self.profile.memory_bytes),
            ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", self.profile.memory_bytes * 0.9),
            ("nv_gpu_power_usage", "GPU power usage in watts", self.profile.power_limit_w * (0.2 + 0.6 * util)),
            ("nv_gpu_power_limit", "GPU power management limit in watts", self.profile.power_limit_w),
        ):
            fam(name, "gauge", help_)
            out.append(f"{name}{_labels(gpu)} {_num(value)}")
        fam("nv_energy_consumption", "counter", "GPU energy consumption in joules since the Triton Server started")
        out.append(f"nv_energy_consumption{_labels(gpu)} {_num(round(self.energy_j, 3))}")
        return "\n".join(out) + "\n"


def gpu_uuid_for(model: str, profile: GpuProfile) -> str:
    """A stable, NVML-shaped UUID for the emulated GPU."""
    h = hashlib.sha1(f"{model}/{profile.name}".encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
