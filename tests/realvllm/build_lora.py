"""Write a LoRA adapter in PEFT's format (adapter_config.json + adapter_model.safetensors, random weights) for the
tiny Llama of tests/realvllm, without peft: `python build_lora.py OUT_DIR SEED MODEL_DIR` in the vLLM venv.

Used to record tests/agents/adapters/samples/vllm_cpu_lora.prom from a real vLLM started with
`--enable-lora --max-loras 1 --max-lora-rank 8 --lora-modules sql=DIR chat=DIR`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

RANK = 8


def build(out: Path, seed: int, model_dir: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((model_dir / "config.json").read_text())
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(cfg["num_hidden_layers"]):
        for mod, rows in (("q_proj", cfg["num_attention_heads"] * head_dim),
                          ("v_proj", cfg["num_key_value_heads"] * head_dim)):  # fmt: skip
            p = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            tensors[f"{p}.lora_A.weight"] = torch.randn(RANK, hidden, generator=g) * 0.01
            tensors[f"{p}.lora_B.weight"] = torch.randn(rows, RANK, generator=g) * 0.01
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
              "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny-llama",
              "fan_in_fan_out": False, "modules_to_save": None, "use_rslora": False, "use_dora": False}  # fmt: skip
    (out / "adapter_config.json").write_text(json.dumps(config))


if __name__ == "__main__":
    build(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
