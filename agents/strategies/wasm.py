"""WebAssembly routing strategies run in wasmtime, sandboxed by the runtime itself.

A strategy is named `wasm:PATH#sha256=HEX` (optionally `&fuel=N&memory_mb=M` in the fragment). The module is read
once, its checksum compared with the pinned one, and refused at load when it is too large, imports anything (ABI 1
grants no imports: no WASI, no files, no sockets), lacks an export or speaks another ABI version.

ABI version 1 (little-endian; documented in docs/parts/strategies.md):

* exports `memory`, `infermesh_abi_version() -> i32` (returns 1), `alloc(size: i32) -> i32`,
  `rank(ptr: i32, len: i32) -> i32`.
* The host samples and filters candidates (the same sub-linear sampling as the built-ins) and writes them into a
  guest-owned buffer obtained from `alloc`: a 32-byte header (u32 abi, u32 n, u32 k, u32 record size = 64,
  u32 prompt_tokens, u32 max_tokens, u32 reserved x2) then `n` 64-byte records of seven f64 (waiting, running,
  max_concurrency, inflight, kv_cache_usage, ewma_ttft_s, error_rate; NaN = unknown) and u32 flags, u32 reserved.
* `rank` returns a pointer to a guest-owned answer: u32 count (<= k), u32 reserved, then `count` entries of
  {u32 index, u32 reserved, f64 score}, best first. The host copies it out before the next call.
* Each call gets `fuel` units (about one per instruction) and the store a memory cap; running out of fuel, a trap,
  growing past the cap or an answer that is out of bounds, repeats an index or has a non-finite score raises
  `WasmFault` whose `fallback_reason` the host counts before falling back to its default.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi  # the checked `Func.__call__` costs ~100 us; the raw call is what a decision affords

from agents.strategies.base import (
    RouteRequest,
    SampleParams,
    Scored,
    Strategy,
    TargetIndex,
    TargetView,
    sample_candidates,
)

ABI_VERSION = 1
HEADER = struct.Struct("<8I")
RECORD = struct.Struct("<7d2I")
ANSWER_HEAD = struct.Struct("<2I")
ANSWER_ENTRY = struct.Struct("<2Id")
REQUIRED_EXPORTS = ("memory", "infermesh_abi_version", "alloc", "rank")
MAX_MODULE_BYTES = 4 << 20
DEFAULT_FUEL = 200_000
DEFAULT_MEMORY_MB = 16
MAX_CANDIDATES = 1024  # a scan when sampling found nothing admissible is capped: the answer must stay bounded
FLAG_HEALTHY = 1
FLAG_WARMING = 2
FLAG_LOADED = 4
_NAN = math.nan


class WasmLoadError(ValueError):
    """A module refused at load; the message names the problem. The previous strategy stays in place."""


class WasmFault(RuntimeError):
    """A call that must fall back; `fallback_reason` is what the host counts (fuel, memory, trap, malformed)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.fallback_reason = reason


@dataclass(frozen=True, slots=True)
class WasmSpec:
    path: Path
    sha256: str
    fuel: int = DEFAULT_FUEL
    memory_mb: int = DEFAULT_MEMORY_MB


def parse_spec(spec: str) -> WasmSpec:
    """`wasm:PATH#sha256=HEX[&fuel=N][&memory_mb=M]` -> WasmSpec; a missing checksum is an error (pinning is
    mandatory: a module is code the router runs on every request)."""
    if not spec.startswith("wasm:"):
        raise WasmLoadError(f"{spec!r} is not a wasm: strategy name")
    body, _, frag = spec[5:].partition("#")
    if not body:
        raise WasmLoadError(f"{spec!r}: no module path")
    params: dict[str, str] = {}
    for part in filter(None, frag.split("&")):
        key, eq, value = part.partition("=")
        if not eq or key not in ("sha256", "fuel", "memory_mb"):
            raise WasmLoadError(f"{spec!r}: unknown parameter {part!r} (sha256, fuel, memory_mb)")
        params[key] = value
    digest = params.get("sha256", "").lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise WasmLoadError(f"{spec!r}: a pinned checksum '#sha256=<64 hex digits>' is required")
    try:
        fuel = int(params.get("fuel", DEFAULT_FUEL))
        memory_mb = int(params.get("memory_mb", DEFAULT_MEMORY_MB))
    except ValueError as exc:
        raise WasmLoadError(f"{spec!r}: fuel and memory_mb are integers") from exc
    if fuel <= 0 or not 1 <= memory_mb <= 1024:
        raise WasmLoadError(f"{spec!r}: fuel must be > 0 and memory_mb within 1..1024")
    return WasmSpec(Path(body), digest, fuel, memory_mb)


def wasm_spec_name(path: str | Path, **params: int) -> str:
    """The pinned name of a module file: `wasm:PATH#sha256=...` (what a routing policy names)."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"wasm:{path}#sha256={digest}{extra}"


_ENGINE: wasmtime.Engine | None = None


def _engine() -> wasmtime.Engine:
    global _ENGINE
    if _ENGINE is None:
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        cfg.max_wasm_stack = 256 << 10
        _ENGINE = wasmtime.Engine(cfg)
    return _ENGINE


class WasmStrategy(Strategy):
    """A routing strategy whose ranking runs in a wasmtime instance under fuel and memory limits."""

    name = "wasm"

    def __init__(self, spec: str, params: SampleParams | None = None, *, max_module_bytes: int = MAX_MODULE_BYTES):
        ws = parse_spec(spec)
        self.spec = spec
        self.params = params or SampleParams()
        self.fuel = ws.fuel
        self.memory_cap = ws.memory_mb << 20
        try:
            size = ws.path.stat().st_size
        except OSError as exc:
            raise WasmLoadError(f"wasm strategy {str(ws.path)!r} cannot be read: {exc.strerror}") from exc
        if size > max_module_bytes:
            raise WasmLoadError(f"wasm strategy {str(ws.path)!r} is {size} bytes, over the {max_module_bytes} limit")
        data = ws.path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != ws.sha256:
            raise WasmLoadError(
                f"wasm strategy {str(ws.path)!r}: checksum mismatch (pinned {ws.sha256}, file {actual})"
            )
        engine = _engine()
        try:
            module = wasmtime.Module(engine, data)
        except wasmtime.WasmtimeError as exc:
            raise WasmLoadError(f"wasm strategy {str(ws.path)!r} is not a valid module: {exc}") from exc
        if module.imports:
            names = ", ".join(f"{i.module}.{i.name}" for i in module.imports)
            raise WasmLoadError(f"wasm strategy {str(ws.path)!r} imports {names}; ABI {ABI_VERSION} grants none")
        exported = {e.name for e in module.exports}
        missing = [n for n in REQUIRED_EXPORTS if n not in exported]
        if missing:
            raise WasmLoadError(f"wasm strategy {str(ws.path)!r} lacks the export(s) {', '.join(missing)}")
        self.path = ws.path
        self.module = module
        self._instantiate()
        self._set_fuel()
        try:
            version = self._abi_fn(self.store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise WasmLoadError(f"wasm strategy {str(ws.path)!r}: infermesh_abi_version() failed: {exc}") from exc
        if version != ABI_VERSION:
            raise WasmLoadError(
                f"wasm strategy {str(ws.path)!r} speaks ABI version {version}; this host speaks {ABI_VERSION}"
            )

    def _instantiate(self) -> None:
        self.store = wasmtime.Store(_engine())
        self.store.set_limits(memory_size=self.memory_cap, instances=1, tables=1, memories=1, table_elements=10_000)
        try:
            inst = wasmtime.Instance(self.store, self.module, [])
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise WasmLoadError(f"wasm strategy {str(self.path)!r} cannot be instantiated: {exc}") from exc
        exports = inst.exports(self.store)
        memory = exports["memory"]
        funcs: list[wasmtime.Func] = []
        for fname in REQUIRED_EXPORTS[1:]:
            func = exports[fname]
            if not isinstance(func, wasmtime.Func):
                raise WasmLoadError(f"wasm strategy {str(self.path)!r}: export {fname} is not a function")
            funcs.append(func)
        if not isinstance(memory, wasmtime.Memory):
            raise WasmLoadError(f"wasm strategy {str(self.path)!r}: export memory is not a memory")
        want = {"infermesh_abi_version": ([], ["i32"]), "alloc": (["i32"], ["i32"]), "rank": (["i32", "i32"], ["i32"])}
        for fname, func in zip(REQUIRED_EXPORTS[1:], funcs, strict=True):
            ty = func.type(self.store)
            got = ([str(t) for t in ty.params], [str(t) for t in ty.results])
            if got != want[fname]:
                raise WasmLoadError(
                    f"wasm strategy {str(self.path)!r}: export {fname} has type {got}, ABI {ABI_VERSION} wants "
                    f"{want[fname]}"
                )
        self.memory: wasmtime.Memory = memory
        self._abi_fn, self._alloc_fn, self._rank_fn = funcs
        self._ctx = self.store._context()
        self._mem_ref = ctypes.byref(memory._memory)
        self._rank_ref = ctypes.byref(self._rank_fn._func)
        self._args = (ffi.wasmtime_val_raw_t * 2)()
        self._trap = ctypes.POINTER(ffi.wasm_trap_t)()
        self._trap_ref = ctypes.byref(self._trap)
        self._in_ptr = 0
        self._in_cap = 0
        self._mem_key = (0, -1)
        self._mem_before = 0
        self._mem: Any = None

    def _set_fuel(self) -> None:
        self.store.set_fuel(self.fuel)

    # -- the per-request path ------------------------------------------------------------------------------------
    def candidates(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[TargetView]:
        """Admissible candidates, sampled like the built-ins: sub-linear, a bounded scan only when none was found."""
        targets = index.candidates(request.model)
        if not targets:
            return []
        params = self.params
        seen: dict[str, TargetView] = {}
        admits = request.admits
        for view in sample_candidates(targets, params, rng):
            if admits(view):
                seen[view.target_id] = view
        if len(seen) < k and len(targets) >= params.exact_below:
            for _ in range(params.extra_rounds):
                for view in sample_candidates(targets, params, rng):
                    if admits(view):
                        seen[view.target_id] = view
                if len(seen) >= k:
                    break
            if not seen:
                for view in targets:
                    if admits(view):
                        seen[view.target_id] = view
                        if len(seen) >= MAX_CANDIDATES:
                            break
        return list(seen.values())

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        views = self.candidates(index, request, k, rng)
        if not views:
            return []
        return self.rank_views(views, request, k)

    def _view(self) -> Any:
        """A ctypes view of the whole guest memory, re-made only when the memory grew or moved."""
        limit = ffi.wasmtime_memory_data_size(self._ctx, self._mem_ref)
        base = ctypes.addressof(ffi.wasmtime_memory_data(self._ctx, self._mem_ref).contents)
        if self._mem_key != (base, limit):
            self._mem_key = (base, limit)
            # a flat byte memoryview: struct packs into it far faster than into the ctypes array itself
            self._mem = memoryview((ctypes.c_char * limit).from_address(base)).cast("B")
        return self._mem

    def rank_views(self, views: list[TargetView], request: RouteRequest, k: int) -> list[Scored]:
        """Encode `views` straight into the guest's input buffer, call its `rank` under the limits, validate and
        decode the answer."""
        n = len(views)
        size = HEADER.size + n * RECORD.size
        store = self.store
        try:
            err = ffi.wasmtime_context_set_fuel(self._ctx, self.fuel)
            if err:
                raise wasmtime.WasmtimeError._from_ptr(err)
            if self._in_cap < size:
                cap = max(size, 4096)
                self._in_ptr = self._alloc_fn(store, cap)
                self._in_cap = cap
            mem = self._view()
            self._mem_before = len(mem)
            ptr = self._in_ptr
            if not (ptr > 0 and ptr + size <= len(mem)):
                self._in_cap = 0
                raise WasmFault("malformed", f"alloc returned {ptr}, outside memory of {len(mem)} bytes")
            HEADER.pack_into(mem, ptr, ABI_VERSION, n, k, RECORD.size, request.prompt_tokens, request.max_tokens, 0, 0)
            off = ptr + HEADER.size
            pack = RECORD.pack_into
            for v in views:
                w = v.requests_waiting
                r = v.requests_running
                kv = v.kv_cache_usage
                pack(
                    mem, off,
                    _NAN if w is None else w, _NAN if r is None else r, float(v.max_concurrency or 0),
                    float(v.inflight), _NAN if kv is None else kv, v.ewma_ttft_s, v.error_rate,
                    (FLAG_HEALTHY if v.health == "healthy" else 0) | (FLAG_WARMING if v.warming else 0)
                    | (FLAG_LOADED if v.loaded else 0),
                    0,
                )  # fmt: skip
                off += RECORD.size
            out = self._call_rank(ptr, size)
        except wasmtime.Trap as exc:
            raise self._fault(exc) from exc
        except wasmtime.WasmtimeError as exc:
            raise WasmFault("trap", str(exc)) from exc
        # `rank` may have grown (and so moved) memory: re-read the view only then
        return self._decode(out, views, k, mem if self._mem_before == self._size() else self._view())

    def _size(self) -> int:
        return int(ffi.wasmtime_memory_data_size(self._ctx, self._mem_ref))

    def _call_rank(self, ptr: int, size: int) -> int:
        """`rank(ptr, size)` through the unchecked raw call (its type was checked at load)."""
        args = self._args
        args[0].i32 = ptr
        args[1].i32 = size
        trap = self._trap
        error = ffi.wasmtime_func_call_unchecked(self._ctx, self._rank_ref, args, 2, self._trap_ref)
        if trap:
            self._trap = ctypes.POINTER(ffi.wasm_trap_t)()  # the Trap object owns the old pointer now
            self._trap_ref = ctypes.byref(self._trap)
            raise wasmtime.Trap._from_ptr(trap)
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        return int(args[0].i32)

    def _fault(self, exc: wasmtime.Trap) -> WasmFault:
        code = exc.trap_code
        size = self.memory.data_len(self.store)
        if size > self._mem_before and size * 2 > self.memory_cap:
            # The store refuses a grow past the cap (memory.grow returns -1); a call that then fails after growing
            # past half the cap is counted as a memory overrun whatever instruction ended it.
            fault = WasmFault("memory", f"grew to {size} bytes of its {self.memory_cap} cap and failed ({exc.message})")
        elif code == wasmtime.TrapCode.OUT_OF_FUEL:
            fault = WasmFault("fuel", f"ran out of its {self.fuel} fuel")
        else:
            fault = WasmFault("trap", exc.message)
        if fault.fallback_reason == "memory":
            # The guest's heap is at the cap and its state is suspect: start the next decision on a fresh instance.
            self._instantiate()
        return fault

    def _decode(self, out: int, views: list[TargetView], k: int, mem: Any) -> list[Scored]:
        limit = len(mem)
        n = len(views)
        if out <= 0 or out + ANSWER_HEAD.size > limit:
            raise WasmFault("malformed", f"answer pointer {out!r} outside memory of {limit} bytes")
        count, _ = ANSWER_HEAD.unpack_from(mem, out)
        if count > min(k, n):
            raise WasmFault("malformed", f"answer has {count} entries for k={k} and {n} candidates")
        if out + ANSWER_HEAD.size + count * ANSWER_ENTRY.size > limit:
            raise WasmFault("malformed", "answer runs past the end of memory")
        ranked: list[Scored] = []
        used: set[int] = set()
        off = out + ANSWER_HEAD.size
        unpack = ANSWER_ENTRY.unpack_from
        for _ in range(count):
            i, _, score = unpack(mem, off)
            off += ANSWER_ENTRY.size
            if i >= n or i in used:
                raise WasmFault("malformed", f"answer names candidate {i} (of {n}) twice or out of range")
            if not math.isfinite(score):
                raise WasmFault("malformed", f"answer scores candidate {i} as {score}")
            used.add(i)
            ranked.append(Scored(views[i], score))
        return ranked


def load_wasm_strategy(spec: str, **options: Any) -> WasmStrategy:
    return WasmStrategy(spec, **options)


def check_module(data: bytes, max_module_bytes: int = MAX_MODULE_BYTES) -> str:
    """Refuse bytes that would be refused at load (size, validity, imports, exports, their types, ABI version) with
    the same messages, naming "the module"; returns its SHA-256 (what a policy pins)."""
    import tempfile

    if len(data) > max_module_bytes:
        raise WasmLoadError(f"the module is {len(data)} bytes, over the {max_module_bytes} limit")
    with tempfile.TemporaryDirectory(prefix="infermesh-module-") as tmp:
        path = Path(tmp) / "module.wasm"
        path.write_bytes(data)
        try:
            WasmStrategy(wasm_spec_name(path), max_module_bytes=max_module_bytes)
        except WasmLoadError as exc:
            raise WasmLoadError(str(exc).replace(f"wasm strategy {str(path)!r}", "the module")) from None
    return hashlib.sha256(data).hexdigest()
