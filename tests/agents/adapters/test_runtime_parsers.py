"""Runtime adapters against published /metrics samples (see samples/SOURCES.md), garbage, and the window logic."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agents.signals.runtime import (
    MetricsParseError,
    RuntimeWindow,
    histogram_quantile,
    parse_metrics,
    read_runtime,
)

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def one(flavor: str, text: str, **kw: str):  # type: ignore[no-untyped-def]
    states = parse_metrics(flavor, text, **kw)
    assert len(states) == 1, states
    return states[0]


def test_vllm_v1_doc_fragment() -> None:
    s = one("vllm", sample("vllm.prom"), endpoint="http://n1:8000")
    assert s.model == "meta-llama/Llama-3.1-8B-Instruct" and s.runtime == "vllm" and s.endpoint == "http://n1:8000"
    assert s.requests_running == 8.0
    assert s.requests_waiting is None and s.kv_cache_usage is None  # not in the published fragment
    # 140 requests, rank 133 falls in (0.06, 0.08] holding 15 of them (123 -> 138)
    assert s.ttft_p95_s == pytest.approx(0.06 + 0.02 * (133 - 123) / 15)
    assert s.latency_p95_s is None


def test_vllm_legacy_names() -> None:
    s = one("vllm", sample("vllm_v0.prom"))
    assert s.model == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    assert (s.requests_waiting, s.requests_running, s.kv_cache_usage) == (0.0, 0.0, 0.0)
    readings = read_runtime("vllm", sample("vllm_v0.prom"))
    assert readings[0].generation_tokens_total == 955.0 and readings[0].prompt_tokens_total == 148.0


def test_vllm_current_names_and_engines() -> None:
    text = "\n".join(
        [
            "# TYPE vllm:num_requests_waiting gauge",
            'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0',
            'vllm:num_requests_waiting{engine="1",model_name="m"} 4.0',
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{engine="0",model_name="m"} 10.0',
            'vllm:num_requests_running{engine="1",model_name="m"} 12.0',
            "# TYPE vllm:kv_cache_usage_perc gauge",
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
            'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5',
            # the hidden legacy gauge must not override the current one
            "# TYPE vllm:gpu_cache_usage_perc gauge",
            'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.9',
        ]
    )
    s = one("vllm", text + "\n")
    assert (s.requests_waiting, s.requests_running, s.kv_cache_usage) == (7.0, 22.0, 0.5)


def test_sglang_published_block() -> None:
    s = one("sglang", sample("sglang.prom"))
    assert s.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert (s.requests_waiting, s.requests_running, s.kv_cache_usage) == (2826.0, 162.0, 0.28)
    assert s.tokens_per_s == pytest.approx(86.50814177726902)
    # p95 of 11008 lands in +Inf: PromQL answers with the highest finite bound
    assert s.ttft_p95_s == 30.0 and s.latency_p95_s == 60.0


def test_triton_doc_fragment_with_its_oddities() -> None:
    s = one("triton", sample("triton.prom"))
    assert s.model == "my_model" and s.revision == "1"
    # bare-name buckets with le labels: 37 requests, rank 35.15 in (500, 2000] ms holding 6 (30 -> 36)
    assert s.ttft_p95_s == pytest.approx((500 + 1500 * (35.15 - 30) / 6) / 1000)


def test_triton_tensorrt_llm_backend() -> None:
    s = one("triton", sample("triton_trtllm.prom"))
    assert s.model == "tensorrt_llm" and s.revision == "1"
    assert s.requests_waiting == 1.0 and s.requests_running == 0.0 and s.max_concurrency == 512
    assert s.kv_cache_usage == pytest.approx(1 / 6239)
    v1 = one("triton", sample("triton_trtllm_v1_model.prom"))
    assert v1.model == "tensorrt_llm" and v1.requests_waiting is None and v1.kv_cache_usage is None


def test_triton_pending_count_without_trt_llm() -> None:
    text = (
        '# TYPE nv_inference_pending_request_count gauge\nnv_inference_pending_request_count{model="a",version="2"} 5\n'
    )
    s = one("triton", text)
    assert (s.model, s.revision, s.requests_waiting) == ("a", "2", 5.0)


def test_tgi_written_sample() -> None:
    s = one("tgi", sample("tgi.prom"), model="bigcode/starcoder")
    assert s.model == "bigcode/starcoder" and s.runtime == "tgi"
    assert (s.requests_waiting, s.requests_running) == (7.0, 24.0)
    assert s.kv_cache_usage is None and s.ttft_p95_s is None  # TGI publishes neither
    # 1198 requests, rank 1138.1 in (2, 4] s holding 250 (900 -> 1150)
    assert s.latency_p95_s == pytest.approx(2 + 2 * (1138.1 - 900) / 250)


def test_torchserve_tfserving_ovms_written_samples() -> None:
    ts = {s.model: s for s in parse_metrics("torchserve", sample("torchserve.prom"))}
    assert set(ts) == {"llama-small", "resnet50"}
    assert ts["resnet50"].revision == "2.0" and ts["llama-small"].revision == ""
    assert ts["resnet50"].requests_waiting is None  # TorchServe has no queue depth
    tf = one("tfserving", sample("tfserving.prom"))
    assert tf.model == "half_plus_two"
    assert tf.latency_p95_s == pytest.approx((1000 + 9000 * (114 - 100) / 20) / 1e6)
    ov = one("ovms", sample("ovms.prom"))
    assert (ov.model, ov.revision, ov.requests_running, ov.requests_waiting, ov.max_concurrency) == (
        "resnet", "1", 4.0, 2.0, 4,
    )  # fmt: skip
    assert ov.latency_p95_s == pytest.approx((10000 + 10000 * (237.5 - 200) / 50) / 1e6)


@pytest.mark.parametrize(
    "garbage",
    ["hello world", "<html><body>502 Bad Gateway</body></html>", '{"status": "ok"}', "vllm:num_requests_waiting{ 1"],
)
@pytest.mark.parametrize("flavor", ["vllm", "tgi", "triton", "sglang", "torchserve", "tfserving", "ovms"])
def test_garbage_is_rejected_with_a_clear_error(flavor: str, garbage: str) -> None:
    with pytest.raises(MetricsParseError, match="not Prometheus exposition"):
        parse_metrics(flavor, garbage)


def test_unknown_flavor_and_other_runtime_text() -> None:
    with pytest.raises(ValueError, match="unknown runtime flavor 'ollama'"):
        parse_metrics("ollama", "")
    assert parse_metrics("vllm", "") == []
    assert parse_metrics("vllm", sample("sglang.prom")) == []  # valid text, but no vLLM series


def test_nan_and_negative_values_are_unknown() -> None:
    text = (
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{model_name="m"} NaN\n'
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="m"} -3\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{model_name="m"} +Inf\n'
    )
    s = one("vllm", text)
    assert s.requests_waiting is None and s.requests_running is None and s.kv_cache_usage is None


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile(0.95, []) is None
    assert histogram_quantile(0.95, [(1.0, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.5, [(1.0, 10.0), (2.0, 20.0), (math.inf, 20.0)]) == pytest.approx(1.0)
    assert histogram_quantile(0.75, [(1.0, 10.0), (2.0, 20.0), (math.inf, 20.0)]) == pytest.approx(1.5)
    assert histogram_quantile(0.99, [(1.0, 10.0), (math.inf, 20.0)]) == 1.0


def test_window_gives_rates_and_recent_quantiles() -> None:
    def text(gen: int, b1: int, b2: int) -> str:
        return (
            "# TYPE vllm:generation_tokens_total counter\n"
            f'vllm:generation_tokens_total{{model_name="m"}} {gen}\n'
            "# TYPE vllm:time_to_first_token_seconds histogram\n"
            f'vllm:time_to_first_token_seconds_bucket{{le="0.1",model_name="m"}} {b1}\n'
            f'vllm:time_to_first_token_seconds_bucket{{le="1.0",model_name="m"}} {b2}\n'
            f'vllm:time_to_first_token_seconds_bucket{{le="+Inf",model_name="m"}} {b2}\n'
            f'vllm:time_to_first_token_seconds_count{{model_name="m"}} {b2}\n'
        )

    w = RuntimeWindow("http://x")
    first = w.apply(read_runtime("vllm", text(1000, 100, 100)), now=10.0)[0]
    assert first.tokens_per_s is None and first.ttft_p95_s == pytest.approx(0.095)
    # 2 s later: 500 more tokens, and 20 new requests all slower than 0.1 s
    second = w.apply(read_runtime("vllm", text(1500, 100, 120)), now=12.0)[0]
    assert second.tokens_per_s == pytest.approx(250.0)
    assert second.ttft_p95_s == pytest.approx(0.1 + 0.9 * 19 / 20)
    # nothing new: no recent observation, so no recent p95; a counter reset gives no rate
    third = w.apply(read_runtime("vllm", text(1500, 100, 120)), now=13.0)[0]
    assert third.tokens_per_s == 0.0 and third.ttft_p95_s is None
    fourth = w.apply(read_runtime("vllm", text(10, 1, 1)), now=14.0)[0]
    assert fourth.tokens_per_s is None
