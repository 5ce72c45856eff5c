"""The KServe v2 binary tensor codec: every datatype round-trips, sizes are checked, outputs are chosen as asked."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router import kserve, v2codec
from router.service import Refusal

VALUES = {
    "BOOL": [True, False],
    "UINT8": [0, 255],
    "UINT16": [1, 65535],
    "UINT32": [7, 2**32 - 1],
    "UINT64": [9, 2**64 - 1],
    "INT8": [-128, 127],
    "INT16": [-3, 3],
    "INT32": [-(2**31), 5],
    "INT64": [-(2**63), 6],
    "FP16": [0.5, -2.0],
    "FP32": [0.25, 3.5],
    "FP64": [1e-300, 2.5],
    "BF16": [1.0, -0.5],
    "BYTES": [b"", b"h\xc3\xa9llo"],
}


@pytest.mark.parametrize("datatype", sorted(VALUES))
def test_binary_round_trip(datatype: str) -> None:
    data = VALUES[datatype]
    raw = v2codec.encode_binary(datatype, data)
    assert v2codec.decode_binary("t", datatype, raw, len(data)) == data
    with pytest.raises(Refusal) as e:
        v2codec.decode_binary("t", datatype, raw + b"\0", len(data))
    assert e.value.status == 400 and "'t'" in e.value.message


def test_request_with_binary_and_json_inputs() -> None:
    text = struct.pack("<I", 5) + b"hello"
    head = json.dumps(
        {
            "id": "a",
            "inputs": [
                {"name": "text_input", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": 9}},
                {"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": [[4]]},
                {"name": "stream", "datatype": "BOOL", "shape": [1], "parameters": {"binary_data_size": 1}},
            ],
            "outputs": [{"name": "num_output_tokens", "parameters": {"binary_data": False}}],
            "parameters": {"binary_data_output": True, "temperature": 0.5},
        }
    ).encode()
    obj, blob = v2codec.split_body(head + text + b"\x01", str(len(head)))
    req = kserve.parse_v2(obj, blob)
    assert (req.id, req.text, req.max_tokens, req.stream) == ("a", "hello", 4, True)
    assert req.params == {"temperature": 0.5}
    assert req.outputs is not None and req.outputs.names == ["num_output_tokens"]
    assert json.loads(kserve.to_completion(req, "m"))["temperature"] == 0.5


def test_encode_http_mixed_outputs() -> None:
    out = kserve.outputs_of("hi there", "stop", 3, 2)
    tensors = kserve.tensors_of({"outputs": out})
    spec = v2codec.OutputSpec(["text_output", "num_output_tokens"], {"num_output_tokens": False}, True)
    body, n = v2codec.encode_http({"id": "x"}, tensors, spec)
    assert n is not None
    head = json.loads(body[:n])
    assert [o["name"] for o in head["outputs"]] == ["text_output", "num_output_tokens"]
    assert head["outputs"][1]["data"] == [2]
    size = head["outputs"][0]["parameters"]["binary_data_size"]
    assert v2codec.decode_binary("t", "BYTES", body[n : n + size], 1) == [b"hi there"]
    plain, none = v2codec.encode_http({}, tensors, v2codec.OutputSpec(None, {}, False))
    assert none is None and len(json.loads(plain)["outputs"]) == 4


@pytest.mark.parametrize(
    "obj, blob, words",
    [
        ({"inputs": [{"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}]}, b"", "unknown datatype"),
        ({"inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": [1]}]}, b"", "shape says 2"),
        ({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": ["1"]}]}, b"", "not a INT32"),
        ({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1]}]}, b"", "binary_data_size"),
        (
            {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": 8}}]},
            b"\0" * 4,
            "runs past",
        ),
    ],
)
def test_bad_tensors_are_refused(obj: dict, blob: bytes, words: str) -> None:
    with pytest.raises(Refusal) as e:
        v2codec.parse_inputs(obj, blob)
    assert e.value.status == 400 and words in e.value.message


def test_unknown_output_is_refused() -> None:
    with pytest.raises(Refusal) as e:
        v2codec.parse_outputs({"outputs": [{"name": "logits"}]}, ["text_output"])
    assert "logits" in e.value.message and "text_output" in e.value.message


_dtype = st.sampled_from(sorted(VALUES)) | st.text(max_size=4)
_tensor = st.fixed_dictionaries(
    {"name": st.sampled_from(["text_input", "max_tokens", "stream", "x"]), "datatype": _dtype},
    optional={
        "shape": st.lists(st.integers(-1, 3), max_size=3),
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-2, 40) | st.booleans()}),
        "data": st.lists(st.integers(-5, 5) | st.text(max_size=3) | st.booleans(), max_size=3),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=st.lists(_tensor, max_size=3), blob=st.binary(max_size=48), cut=st.integers(-3, 3))
def test_any_binary_request_parses_or_is_a_400(inputs: list[dict], blob: bytes, cut: int) -> None:
    head = json.dumps({"inputs": inputs}).encode()
    body = head + blob
    try:
        obj, rest = v2codec.split_body(body, str(len(head) + cut))
        kserve.parse_v2(obj, rest)
    except Refusal as e:
        assert e.status == 400 and e.message
