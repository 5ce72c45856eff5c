"""KServe v2 tensors on the wire: JSON `data`, the binary tensor data extension over HTTP, gRPC contents and raw.

Sans-IO: bytes and dicts in, typed tensors (flat Python lists) out, and back. The binary extension is what NVIDIA's
`tritonclient` speaks by default: the JSON header's length in `Inference-Header-Content-Length`, then each binary
tensor's bytes in input order, sized by its `parameters.binary_data_size`; BYTES elements are a 4-byte little-endian
length and the bytes. Outputs are sent binary when the client asks (`outputs[].parameters.binary_data` or
`parameters.binary_data_output`).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from router.service import Refusal

HEADER = "Inference-Header-Content-Length"

# datatype -> struct format (little-endian). BF16 is handled on its own (no struct code).
_FMT = {
    "BOOL": "?",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}
DATATYPES = frozenset({*_FMT, "BF16", "BYTES"})
_INTS = frozenset(k for k in _FMT if "INT" in k)
_FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] = field(default_factory=list)  # flat, row-major; BYTES elements are bytes
    parameters: dict[str, Any] = field(default_factory=dict)


def element_count(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def _check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise Refusal(400, "invalid_input", f"tensor {name!r}: 'shape' must be a list of non-negative integers")
    return shape


def _flatten(v: Any) -> list[Any]:
    if isinstance(v, list):
        out: list[Any] = []
        for x in v:
            out.extend(_flatten(x))
        return out
    return [v]


def decode_binary(name: str, datatype: str, raw: bytes, count: int) -> list[Any]:
    """The elements of one binary tensor; its byte size must fit its shape exactly."""
    if datatype == "BYTES":
        out: list[Any] = []
        i = 0
        while i < len(raw):
            if i + 4 > len(raw):
                raise Refusal(400, "invalid_binary_data", f"tensor {name!r}: BYTES element length is truncated")
            (n,) = struct.unpack_from("<I", raw, i)
            i += 4
            if i + n > len(raw):
                raise Refusal(
                    400,
                    "invalid_binary_data",
                    f"tensor {name!r}: BYTES element of {n} bytes runs past the tensor's {len(raw)} bytes",
                )
            out.append(raw[i : i + n])
            i += n
        if len(out) != count:
            raise Refusal(
                400, "invalid_binary_data", f"tensor {name!r}: holds {len(out)} BYTES elements, its shape says {count}"
            )
        return out
    if datatype == "BF16":
        if len(raw) != 2 * count:
            raise Refusal(400, "invalid_binary_data", _size_msg(name, datatype, len(raw), 2 * count))
        return [struct.unpack("<f", b"\0\0" + raw[i : i + 2])[0] for i in range(0, len(raw), 2)]
    fmt = _FMT[datatype]
    size = struct.calcsize(fmt) * count
    if len(raw) != size:
        raise Refusal(400, "invalid_binary_data", _size_msg(name, datatype, len(raw), size))
    return list(struct.unpack(f"<{count}{fmt}", raw))


def _size_msg(name: str, datatype: str, got: int, want: int) -> str:
    return f"tensor {name!r}: {got} bytes of binary data, but {datatype} of its shape needs {want}"


def encode_binary(datatype: str, data: list[Any]) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in data:
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    if datatype == "BF16":
        return b"".join(struct.pack("<f", float(v))[2:] for v in data)
    return struct.pack(f"<{len(data)}{_FMT[datatype]}", *data)


def _json_values(name: str, datatype: str, data: Any, count: int) -> list[Any]:
    flat = _flatten(data)
    if len(flat) != count:
        raise Refusal(400, "invalid_input", f"tensor {name!r}: holds {len(flat)} elements, its shape says {count}")
    for v in flat:
        ok = (
            isinstance(v, str)
            if datatype == "BYTES"
            else isinstance(v, bool)
            if datatype == "BOOL"
            else isinstance(v, int) and not isinstance(v, bool)
            if datatype in _INTS
            else isinstance(v, int | float) and not isinstance(v, bool)
        )
        if not ok:
            raise Refusal(400, "invalid_input", f"tensor {name!r}: element {v!r} is not a {datatype} value")
    return [v.encode() for v in flat] if datatype == "BYTES" else flat


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary part that follows it (empty when the request is plain JSON)."""
    if header_length is None:
        head, blob = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise Refusal(400, "invalid_header", f"{HEADER} must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise Refusal(400, "invalid_header", f"{HEADER} is {n}, but the request body holds {len(body)} bytes")
        head, blob = body[:n], body[n:]
    try:
        obj = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f"the first {header_length} bytes (the {HEADER})" if header_length is not None else "the request body"
        raise Refusal(
            400,
            "invalid_json",
            f"{where} is not a JSON object: {e}"
            + ("" if header_length is not None else f"; binary tensor data needs the {HEADER} header"),
        ) from None
    if not isinstance(obj, dict):
        raise Refusal(400, "invalid_json", f"inference request must be a JSON object, got {type(obj).__name__}")
    return obj, blob


def parse_inputs(obj: dict[str, Any], blob: bytes) -> list[Tensor]:
    """Every input tensor of a v2 HTTP request, JSON `data` or binary (in input order from `blob`)."""
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise Refusal(400, "missing_inputs", "'inputs' must be a non-empty list of tensors")
    out: list[Tensor] = []
    offset = 0
    for inp in inputs:
        if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
            raise Refusal(400, "invalid_input", "every input must be an object with a 'name'")
        name = inp["name"]
        dt = inp.get("datatype")
        if dt not in DATATYPES:
            raise Refusal(400, "invalid_input", f"tensor {name!r}: unknown datatype {dt!r}")
        shape = _check_shape(name, inp.get("shape", []))
        params = inp.get("parameters") or {}
        if not isinstance(params, dict):
            raise Refusal(400, "invalid_input", f"tensor {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        count = element_count(shape)
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise Refusal(400, "invalid_binary_data", f"tensor {name!r}: binary_data_size must be an integer >= 0")
            if "data" in inp:
                raise Refusal(400, "invalid_input", f"tensor {name!r}: has both 'data' and binary_data_size")
            if offset + size > len(blob):
                raise Refusal(
                    400,
                    "invalid_binary_data",
                    f"tensor {name!r}: binary_data_size {size} runs past the body's binary part "
                    f"({len(blob)} bytes, {len(blob) - offset} left at this tensor)",
                )
            data = decode_binary(name, dt, blob[offset : offset + size], count)
            offset += size
        else:
            if "data" not in inp:
                raise Refusal(400, "invalid_input", f"tensor {name!r}: needs 'data' or parameters.binary_data_size")
            data = _json_values(name, dt, inp["data"], count)
        out.append(Tensor(name, dt, shape, data, {k: v for k, v in params.items() if k != "binary_data_size"}))
    if offset != len(blob):
        raise Refusal(
            400,
            "invalid_binary_data",
            f"the body's binary part holds {len(blob)} bytes, but the inputs' binary_data_size add up to {offset}",
        )
    return out


@dataclass(slots=True)
class OutputSpec:
    """Which outputs the client wants, and which of them in binary."""

    names: list[str] | None  # None: all
    binary: dict[str, bool]
    binary_default: bool


def parse_outputs(obj: dict[str, Any], known: list[str]) -> OutputSpec:
    params = obj.get("parameters") or {}
    default = bool(isinstance(params, dict) and params.get("binary_data_output") is True)
    outs = obj.get("outputs")
    if outs is None:
        return OutputSpec(None, {}, default)
    if not isinstance(outs, list):
        raise Refusal(400, "invalid_outputs", "'outputs' must be a list of requested output tensors")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for o in outs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise Refusal(400, "invalid_outputs", "every requested output must be an object with a 'name'")
        if o["name"] not in known:
            raise Refusal(400, "unknown_output", f"unknown output {o['name']!r}; this model has {', '.join(known)}")
        names.append(o["name"])
        p = o.get("parameters") or {}
        if isinstance(p, dict) and "binary_data" in p:
            binary[o["name"]] = bool(p["binary_data"])
    return OutputSpec(names, binary, default)


def encode_http(head: dict[str, Any], outputs: list[Tensor], spec: OutputSpec) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output went binary (else None: plain JSON)."""
    chosen = outputs if spec.names is None else [t for n in spec.names for t in outputs if t.name == n]
    blobs: list[bytes] = []
    js: list[dict[str, Any]] = []
    for t in chosen:
        o: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if spec.binary.get(t.name, spec.binary_default):
            raw = encode_binary(t.datatype, t.data)
            o["parameters"] = {**t.parameters, "binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            if t.parameters:
                o["parameters"] = t.parameters
            o["data"] = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in t.data]
        js.append(o)
    header = json.dumps({**head, "outputs": js}).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
