"""Hypothesis on the agent's parsers of outside input: runtime and DCGM exposition text, NCCL Inspector output,
portal link frames, policy-store values and the agent config. Each either returns or raises its own documented
error, whatever the bytes; the inputs are real recorded samples, mutated, plus free text."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.meshd.config import ConfigError, parse_config
from agents.proto.portal_link import ProtocolError, parse_agent_message, parse_portal_message
from agents.signals.comm.inspector import InspectorFormatError, parse_inspector_json, parse_inspector_prometheus
from agents.signals.gpu.dcgm import parse_dcgm
from agents.signals.runtime import MetricsParseError, parse_metrics
from agents.signals.runtime.flavors import FLAVORS
from agents.store.schema import NAMESPACES, StoreInputError, check_key, check_value

SAMPLES = Path(__file__).parent / "adapters" / "samples"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Characters that matter to the grammars being fuzzed: quoting, label sets, comments, numbers, JSON.
SPECIAL = [*'{}[]",=#\n\t :.-+eE0123456789', "NaN", "+Inf", "-Inf", "\x00", "é", "null", "true", "1e400"]


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """`text` with a few edits: delete a span, insert grammar characters or free text, duplicate a line."""
    for _ in range(draw(st.integers(1, 6))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["delete", "insert", "replace", "dup_line", "truncate"]))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 40)) :]
        elif op == "insert":
            text = text[:i] + draw(st.sampled_from(SPECIAL) | st.text(max_size=8)) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(st.sampled_from(SPECIAL)) + text[i + 1 :]
        elif op == "dup_line":
            lines = text.splitlines(keepends=True)
            j = i % len(lines)
            text = "".join([*lines[: j + 1], lines[j], *lines[j + 1 :]])
        else:
            text = text[:i]
    return text


RUNTIME_SAMPLES = {
    "vllm": "vllm.prom",
    "sglang": "sglang.prom",
    "triton": "triton.prom",
    "tgi": "tgi.prom",
    "torchserve": "torchserve.prom",
    "tfserving": "tfserving.prom",
    "ovms": "ovms.prom",
}


def test_every_flavor_has_a_sample() -> None:
    assert set(RUNTIME_SAMPLES) == set(FLAVORS)


@pytest.mark.parametrize("flavor", sorted(RUNTIME_SAMPLES))
@FUZZ
@given(data=st.data())
def test_runtime_parsers_return_or_refuse(flavor: str, data: st.DataObject) -> None:
    text = data.draw(mutated((SAMPLES / RUNTIME_SAMPLES[flavor]).read_text()) | st.text(max_size=300))
    try:
        states = parse_metrics(flavor, text, endpoint="http://10.0.0.1:8000/metrics", model="m")
    except MetricsParseError as err:
        assert str(err)
        return
    for s in states:
        assert s.model  # a reading always names its model
        for v in (s.requests_waiting, s.requests_running, s.tokens_per_s, s.ttft_p95_s, s.latency_p95_s):
            assert v is None or (math.isfinite(v) and v >= 0), s  # fusion never sees NaN, inf or negatives
        assert s.kv_cache_usage is None or 0 <= s.kv_cache_usage <= 1, s


@FUZZ
@given(data=st.data())
def test_dcgm_parser_returns_or_refuses(data: st.DataObject) -> None:
    text = data.draw(mutated((SAMPLES / "dcgm-exporter.prom").read_text()) | st.text(max_size=300))
    try:
        gpus = parse_dcgm(text)
    except MetricsParseError:
        return
    assert all(isinstance(g.index, int) for g in gpus)


@FUZZ
@given(data=st.data())
def test_inspector_parsers_return_or_refuse(data: st.DataObject) -> None:
    text = data.draw(mutated((SAMPLES / "nccl" / "inspector_readme_records.json").read_text()))
    try:
        stats = parse_inspector_json(text, job_id="j1")
    except InspectorFormatError:
        pass
    else:
        assert all(math.isfinite(s.time_s) and s.time_s >= 0 and s.bytes >= 0 for s in stats)
    prom = data.draw(mutated((SAMPLES / "nccl" / "inspector.prom").read_text()))
    with contextlib.suppress(InspectorFormatError, MetricsParseError):
        parse_inspector_prometheus(prom, job_id="j1")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
AGENT_FRAME = json.dumps({"type": "hello", "seq": 1, "node": "gpu-1", "applied_version": 3, "store": "raft"})
PORTAL_FRAME = json.dumps(
    {"type": "changes", "seq": 2, "changes": [{"version": 4, "op": "put", "key": "nodes/gpu-1", "value": {}}]}
)


@FUZZ
@given(data=st.data())
def test_portal_link_frames_parse_or_raise_protocol_error(data: st.DataObject) -> None:
    for parse, seed in ((parse_agent_message, AGENT_FRAME), (parse_portal_message, PORTAL_FRAME)):
        raw = data.draw(mutated(seed) | json_values.map(json.dumps) | st.binary(max_size=64), label=parse.__name__)
        try:
            parse(raw)
        except ProtocolError as err:
            assert str(err)


@FUZZ
@given(ns=st.sampled_from(sorted(NAMESPACES)), name=st.text(max_size=20), value=json_values.map(json.dumps))
def test_store_values_are_checked_or_refused(ns: str, name: str, value: str) -> None:
    key = f"{ns}/{name}"
    try:
        check_key(key)
        normalised = check_value(key, value)
    except StoreInputError as err:
        assert str(err)
        return
    if NAMESPACES[ns] is not None:
        assert check_value(key, normalised) == normalised  # normalising is stable


def _sections() -> st.SearchStrategy[dict[str, Any]]:
    sections = ["node", "listen", "fusion", "runtimes", "gpu", "scoring", "tls", "raft", "gossip", "portal", "bogus"]
    return st.dictionaries(st.sampled_from(sections), json_values, max_size=4)


@FUZZ
@given(raw=_sections() | json_values)
def test_agent_config_loads_or_names_the_problem(raw: Any) -> None:
    try:
        parse_config(raw if isinstance(raw, dict) else {"node": raw}, env={})
    except ConfigError as err:
        assert str(err)
