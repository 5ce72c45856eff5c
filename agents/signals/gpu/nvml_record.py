"""Record real NVML answers to JSON, and replay them: the NVML adapter is tested against recorded responses.

Both classes stand in for the `pynvml` module of nvidia-ml-py: constants and exception classes come from the real
module; each call is keyed by function name and arguments, with device handles named `gpu<i>` and
`gpu<i>/mig<j>`. Event waits are keyed by call order, and a wait past the recording times out like NVML does.
"""

from __future__ import annotations

import ctypes
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml

_HANDLE_FUNCS = {"nvmlDeviceGetHandleByIndex", "nvmlDeviceGetMigDeviceHandleByIndex"}
_SEQUENCED = {"nvmlEventSetWait_v2", "nvmlEventSetWait"}


class Handle:
    """A device handle with a stable name; wraps the real pointer while recording."""

    __slots__ = ("key", "real")

    def __init__(self, key: str, real: Any = None) -> None:
        self.key = key
        self.real = real

    def __repr__(self) -> str:
        return f"Handle({self.key})"


def _arg_key(a: Any) -> str:
    if isinstance(a, Handle):
        return a.key
    if isinstance(a, int | float) and not isinstance(a, bool):
        return str(a)
    return "set"  # the event set, the only other argument NVML calls take here


def call_key(fn: str, args: tuple[Any, ...]) -> str:
    return f"{fn}({','.join(_arg_key(a) for a in args)})"


def _address(h: Any) -> int | None:
    try:
        return ctypes.cast(h, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return None


class RecordingNvml:
    """Calls the real NVML and writes down every answer (or error code)."""

    def __init__(self, real: Any = pynvml) -> None:
        self._real = real
        self.calls: dict[str, Any] = {}
        self._seq: dict[str, int] = defaultdict(int)
        self._by_address: dict[int, Handle] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if not (name.startswith("nvml") and callable(attr)) or isinstance(attr, type):
            return attr

        def call(*args: Any) -> Any:
            key = call_key(name, args)
            if name in _SEQUENCED:
                key = f"{key}#{self._seq[key]}"
                self._seq[call_key(name, args)] += 1
            real_args = [a.real if isinstance(a, Handle) and a.real is not None else a for a in args]
            try:
                result = attr(*real_args)
            except pynvml.NVMLError as e:
                self.calls[key] = {"error": e.value}
                raise
            if name in _HANDLE_FUNCS:
                parent = f"{args[0].key}/mig{args[1]}" if name == "nvmlDeviceGetMigDeviceHandleByIndex" else None
                handle = Handle(parent or f"gpu{args[0]}", result)
                addr = _address(result)
                if addr is not None:
                    self._by_address[addr] = handle
                self.calls[key] = {"ok": {"handle": handle.key}}
                return handle
            self.calls[key] = {"ok": self._encode(result)}
            if name in _SEQUENCED and hasattr(result, "device"):
                known = self._by_address.get(_address(result.device) or -1)
                return SimpleNamespace(**{**_struct_dict(result), "device": known or result.device})
            return result

        return call

    def _encode(self, v: Any) -> Any:
        if isinstance(v, bytes):
            return v.decode(errors="replace")
        if isinstance(v, int | float | str | bool) or v is None:
            return v
        if isinstance(v, list | tuple):
            return [self._encode(x) for x in v]
        if isinstance(v, ctypes.Structure):
            out: dict[str, Any] = {}
            for fname, *_ in v._fields_:
                fv = getattr(v, fname)
                if fname == "device":
                    known = self._by_address.get(_address(fv) or -1)
                    out[fname] = {"handle": known.key} if known else None
                else:
                    out[fname] = self._encode(fv)
            return {"struct": out}
        if isinstance(v, ctypes.Array):
            return [self._encode(x) for x in v]
        if isinstance(v, Handle):
            return {"handle": v.key}
        if isinstance(v, SimpleNamespace):
            return {"struct": {k: self._encode(x) for k, x in vars(v).items()}}
        return repr(v)

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        Path(path).write_text(json.dumps({"meta": meta or {}, "calls": self.calls}, indent=1, sort_keys=True) + "\n")


def _struct_dict(v: Any) -> dict[str, Any]:
    if isinstance(v, SimpleNamespace):
        return dict(vars(v))
    return {f[0]: getattr(v, f[0]) for f in v._fields_}


class ReplayNvml:
    """Answers NVML calls from a recording."""

    def __init__(self, recording: dict[str, Any] | str | Path) -> None:
        data: dict[str, Any] = recording if isinstance(recording, dict) else json.loads(Path(recording).read_text())
        if "calls" not in data:
            raise ValueError("an NVML recording needs a 'calls' object")
        self.meta: dict[str, Any] = data.get("meta", {})
        self.calls: dict[str, Any] = data["calls"]
        self._seq: dict[str, int] = defaultdict(int)
        self.made: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(pynvml, name)
        if not (name.startswith("nvml") and callable(attr)) or isinstance(attr, type):
            return attr

        def call(*args: Any) -> Any:
            key = call_key(name, args)
            if name in _SEQUENCED:
                n = self._seq[key]
                self._seq[key] += 1
                key = f"{key}#{n}"
                if key not in self.calls:
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
            self.made.append(key)
            if key not in self.calls:
                if name in ("nvmlInit", "nvmlShutdown", "nvmlEventSetFree"):
                    return None
                raise LookupError(f"the NVML recording has no answer for {key}")
            entry = self.calls[key]
            if "error" in entry:
                raise pynvml.NVMLError(entry["error"])
            return _decode(entry["ok"])

        return call


def _decode(v: Any) -> Any:
    if isinstance(v, dict):
        if "handle" in v and len(v) == 1:
            return Handle(v["handle"])
        if "struct" in v:
            return SimpleNamespace(**{k: _decode(x) for k, x in v["struct"].items()})
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return v
