"""GPU calibration profiles for the runtime emulator (Llama-3-8B class, BF16, one GPU or MIG slice).

Figures follow ../shared/data/gpu_profiles.md section 3; MIG slices scale an A100/H100 by the fractions of
the NVIDIA MIG user guide (memory 1/8, 2/8, 4/8; SMs 1/7, 2/7, 3/7).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GIB = 1024**3
WEIGHTS_8B_BF16 = 16.06e9  # bytes of Llama-3-8B weights in BF16
KV_BYTES_PER_TOKEN_8B = 131_072  # 2 x 32 layers x 8 KV heads x 128 head_dim x 2 bytes
BANDWIDTH_EFFICIENCY = 0.77  # achieved / peak HBM bandwidth at batch 1 (gpu_profiles.md, source S6)


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """Timing and capacity of one accelerator running the emulated model."""

    name: str
    product: str  # NVML-style product name
    memory_bytes: int
    hbm_tb_s: float
    prefill_tok_s: float
    ttft_fixed_s: float
    itl_b1_s: float
    kv_tokens: int
    power_limit_w: float
    mig_profile: str = ""
    lora_load_s: float = 0.025  # load of a rank-16 LoRA adapter of an 8B model from host memory into a GPU slot

    def decode_step_s(self, batch: int, context_tokens: int) -> float:
        """Time of one decode iteration for `batch` sequences holding `context_tokens` KV tokens in total.

        The weights term grows 1% per sequence (the S3 slope: ITL 29.8 ms at BS1 -> 50.2 ms at BS64); reading the
        KV cache of every sequence adds a bandwidth-bound term, which is what makes long contexts slow.
        """
        if batch <= 0:
            return 0.0
        weights = self.itl_b1_s * (1.0 + 0.01 * batch)
        kv_read = context_tokens * KV_BYTES_PER_TOKEN_8B / (self.hbm_tb_s * 1e12 * BANDWIDTH_EFFICIENCY)
        return weights + kv_read


def _kv_tokens(memory_bytes: float) -> int:
    budget = 0.9 * memory_bytes - WEIGHTS_8B_BF16 - 2e9
    return max(0, int(budget / KV_BYTES_PER_TOKEN_8B))


_BASE: dict[str, GpuProfile] = {
    "a100": GpuProfile("a100", "NVIDIA A100-SXM4-80GB", 80 * GIB, 2.04, 14_000, 0.008, 0.0102, 452_000, 400),
    "h100": GpuProfile("h100", "NVIDIA H100 80GB HBM3", 80 * GIB, 3.35, 29_000, 0.005, 0.0062, 452_000, 700),
    "l40s": GpuProfile("l40s", "NVIDIA L40S", 48 * 10**9, 0.864, 12_800, 0.010, 0.0241, 192_000, 350),
    "h200": GpuProfile("h200", "NVIDIA H200", 141 * 10**9, 4.8, 29_000, 0.004, 0.0043, 830_000, 700),
    "mi300x": GpuProfile("mi300x", "AMD Instinct MI300X", 192 * 10**9, 5.3, 28_000, 0.005, 0.0039, 1_180_000, 750),
}
_ALIASES = {"a100-80gb": "a100", "h100-80gb": "h100", "l40": "l40s", "h200-141gb": "h200"}
# MIG slice -> (memory eighths, SM sevenths); memory gives bandwidth and KV room, SMs give prefill rate
_MIG = {"1g.10gb": (1, 1), "2g.20gb": (2, 2), "3g.40gb": (4, 3), "4g.40gb": (4, 4), "7g.80gb": (8, 7)}


def _mig(base: GpuProfile, slice_name: str) -> GpuProfile:
    if slice_name not in _MIG:
        raise ValueError(f"unknown MIG profile {slice_name!r}; known: {', '.join(sorted(_MIG))}")
    mem8, sm7 = _MIG[slice_name]
    memory = base.memory_bytes * mem8 // 8
    kv = _kv_tokens(memory)
    if kv <= 0:
        raise ValueError(
            f"MIG slice {slice_name} of {base.name} has {memory / GIB:.0f} GiB: an 8B BF16 model does not fit"
        )
    return replace(
        base,
        name=f"{base.name}-mig-{slice_name}",
        memory_bytes=memory,
        hbm_tb_s=base.hbm_tb_s * mem8 / 8,
        prefill_tok_s=base.prefill_tok_s * sm7 / 7,
        itl_b1_s=base.itl_b1_s * 8 / mem8,
        kv_tokens=kv if mem8 < 8 else base.kv_tokens,
        power_limit_w=base.power_limit_w * sm7 / 7,
        mig_profile=slice_name,
    )


def get_profile(name: str) -> GpuProfile:
    """Resolve "h100", "a100-80gb", "l40s", "h100-mig-3g.40gb" or "h100:mig-3g.40gb" to a profile."""
    key = name.strip().lower().replace(":", "-")
    if "-mig-" in key:
        base_name, slice_name = key.split("-mig-", 1)
        base = _BASE.get(_ALIASES.get(base_name, base_name))
        if base is None or base.name not in {"a100", "h100"}:
            raise ValueError(f"MIG profiles exist for a100 and h100 only, not {base_name!r}")
        return _mig(base, slice_name)
    profile = _BASE.get(_ALIASES.get(key, key))
    if profile is None:
        raise ValueError(f"unknown GPU profile {name!r}; known: {', '.join(profile_names())}")
    return profile


def profile_names() -> list[str]:
    names = sorted(_BASE)
    names += [f"{base}-mig-{s}" for base in ("a100", "h100") for s in ("2g.20gb", "3g.40gb", "4g.40gb")]
    return names
