"""Build the tiny Llama the real-vLLM tests serve; run with the vLLM venv's python (transformers, tokenizers, torch).

Random weights (seeded) and a byte-level BPE tokenizer trained here on a few lines: nothing is downloaded. Output is
gibberish; token counts, batching, prefix caching and metrics are vLLM's own. Head dim 64: the CPU attention
kernels refuse smaller ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TEXT = [
    "The mesh routes tokens to a warm replica while queues drain and caches fill under steady load.",
    "Every request finds capacity near its data with low latency and a fair share for each tenant.",
    "Routers rank targets by queue depth, cache usage and recent time to first token.",
    "A runtime streams completions as server-sent events; the client may disconnect at any time.",
    "Tell me about meshes, GPUs, batching, prefix caching and tensor parallel inference.",
    "user assistant system: hello, how are you? I am fine, thank you. What is the weather like today?",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 { } [ ] ( ) , . ; : ' \" ! ? - _ / \\ < > = + * & % $ # @",
]
SPECIAL = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] if m['content'] is string else '' }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=2048
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    print(f"tiny model in {out}: vocab {len(fast)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
