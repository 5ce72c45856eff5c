"""Hypothesis on the router's parsers of outside input: client bodies (OpenAI and KServe v2), runtime answers
read back for KServe clients, and the config file. Each either returns or raises its own documented error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router import kserve
from router.config import ConfigError, parse_config
from router.openai_api import APIS, parse_json_body, validate
from router.service import Refusal

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=16)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)
FIELDS = ["model", "messages", "prompt", "input", "stream", "max_tokens", "max_completion_tokens", "role", "content"]
# Objects shaped like requests, with the fields that matter given random values.
request_like = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)


def _refusal_is_client_error(err: Refusal) -> None:
    assert 400 <= err.status < 500 and err.code and str(err)


@FUZZ
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_json_body_parses_to_an_object_or_is_refused(body: bytes) -> None:
    try:
        obj = parse_json_body(body)
    except Refusal as err:
        _refusal_is_client_error(err)
        return
    assert isinstance(obj, dict)


@pytest.mark.parametrize("api", sorted(APIS))
@FUZZ
@given(obj=request_like)
def test_openai_requests_validate_or_are_refused(api: str, obj: dict[str, Any]) -> None:
    try:
        parsed = validate(api, obj)
    except Refusal as err:
        _refusal_is_client_error(err)
        return
    assert isinstance(parsed.model, str) and parsed.model
    assert isinstance(parsed.stream, bool) and parsed.prompt_chars >= 0
    assert parsed.max_tokens is None or (isinstance(parsed.max_tokens, int) and parsed.max_tokens >= 0)


tensor = st.fixed_dictionaries(
    {"name": st.sampled_from(["text_input", "max_tokens", "other"]) | st.text(max_size=5)},
    optional={"datatype": st.sampled_from(["BYTES", "INT32", "FP32"]), "shape": json_values, "data": json_values},
)
v2_like = st.fixed_dictionaries({}, optional={"inputs": st.lists(tensor, max_size=3) | json_values,
                                              "parameters": json_values, "id": json_values})  # fmt: skip


@FUZZ
@given(obj=v2_like)
def test_kserve_requests_parse_or_are_refused(obj: dict[str, Any]) -> None:
    try:
        req = kserve.parse_v2(obj)
    except Refusal as err:
        _refusal_is_client_error(err)
        return
    assert isinstance(req.text, str) and isinstance(req.params, dict)
    json.loads(kserve.to_v2_json(req))  # what we forward is JSON again
    json.loads(kserve.to_completion(req, "upstream"))


completion_like = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(st.dictionaries(st.sampled_from(["text", "finish_reason"]), json_values), max_size=2)
        | json_values,
        "usage": st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens"]), json_values) | json_values,
    },
)


@FUZZ
@given(raw=st.binary(max_size=100) | (completion_like | json_values).map(lambda v: json.dumps(v).encode()))
def test_runtime_completion_reads_back_or_raises_value_error(raw: bytes) -> None:
    try:
        out, prompt_tokens, completion_tokens = kserve.from_completion(raw, "m", "r1")
    except ValueError:
        return
    assert isinstance(out["outputs"][0]["data"][0], str)
    for n in (prompt_tokens, completion_tokens):
        assert n is None or (isinstance(n, int) and n >= 0)
    json.dumps(out)


@FUZZ
@given(raw=st.dictionaries(st.sampled_from(["listen", "agent", "static_targets", "tenants", "hedging", "routing",
                                            "quotas", "bogus"]), json_values, max_size=4) | json_values)  # fmt: skip
def test_router_config_loads_or_names_the_problem(raw: Any) -> None:
    try:
        parse_config(raw, source="fuzz.yaml", env={})
    except ConfigError as err:
        assert str(err)
