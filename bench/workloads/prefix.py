"""Prefix-heavy workloads, with the parameters the field uses (SGLang's generated-shared-prefix benchmark, the
llm-d and Dynamo prefix-routing evaluations): groups of prompts sharing a long system prompt, and multi-turn
conversations whose every turn carries the whole history.

Text is made of four-letter words, one token each under the project's tokenizer (`agents.emulator.tokenizer`), so
the lengths given are the token lengths the runtimes see. Everything is seeded: the same arguments give the same
workload. Arrivals are Poisson at the given rate; `scale` multiplies every length (a run of minutes on a small box
instead of hours at the field's 9,500-token system prompts).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Any


def words(rng: random.Random, n: int) -> str:
    """`n` tokens of text: random four-letter words (one token each with the project's tokenizer)."""
    letters = string.ascii_lowercase
    return " ".join("".join(rng.choice(letters) for _ in range(4)) for _ in range(n)) + " "


@dataclass(slots=True)
class Request:
    at: float  # seconds after the start of the replay
    messages: list[dict[str, Any]]
    max_tokens: int
    group: int
    session: str = ""
    model: str = ""  # the model (or LoRA adapter) asked for; empty: the bench's base model


@dataclass(slots=True)
class Conversation:
    """A multi-turn chat: turn k+1 is sent when turn k has been answered (plus think time), with the answer."""

    at: float  # start of the first turn
    system: str
    users: list[str]
    max_tokens: int
    think_s: float
    session: str
    group: int = 0
    turns: list[Request] = field(default_factory=list)


def shared_prefix(
    *,
    groups: int = 150,
    prompts_per_group: int = 5,
    system_len: int = 9500,
    question_len: int = 500,
    output_len: int = 1000,
    rate: float = 10.0,
    scale: float = 1.0,
    seed: int = 0,
) -> list[Request]:
    """`groups` x `prompts_per_group` requests; the prompts of a group share a system prompt of `system_len`
    tokens, each with its own question of `question_len` tokens; shuffled, Poisson arrivals at `rate` per second."""
    rng = random.Random(seed)
    sys_n, q_n, out_n = (max(1, int(x * scale)) for x in (system_len, question_len, output_len))
    systems = [f"group {g} " + words(rng, sys_n - 2) for g in range(groups)]
    items = [(g, words(rng, q_n)) for g in range(groups) for _ in range(prompts_per_group)]
    rng.shuffle(items)
    t = 0.0
    out = []
    for g, question in items:
        out.append(Request(t, [{"role": "system", "content": systems[g]}, {"role": "user", "content": question}],
                           out_n, g, f"g{g}"))  # fmt: skip
        t += rng.expovariate(rate)
    return out


def multi_turn(
    *,
    conversations: int = 100,
    turns: int = 5,
    system_len: int = 2000,
    user_len: int = 200,
    output_len: int = 200,
    rate: float = 2.0,
    think_s: float = 1.0,
    scale: float = 1.0,
    seed: int = 0,
) -> list[Conversation]:
    """Conversations starting at Poisson times (`rate` per second), `turns` user turns each; every turn resends the
    history (system prompt, earlier questions and the runtime's own answers) plus a new question."""
    rng = random.Random(seed)
    sys_n, u_n, out_n = (max(1, int(x * scale)) for x in (system_len, user_len, output_len))
    t = 0.0
    out = []
    for c in range(conversations):
        out.append(Conversation(t, f"conversation {c} " + words(rng, sys_n - 2),
                                [words(rng, u_n) for _ in range(turns)], out_n, think_s, f"c{c}", c))  # fmt: skip
        t += rng.expovariate(rate)
    return out


def lora_mix(
    *,
    adapters: list[str],
    requests: int,
    prompt_len: int = 200,
    output_len: int = 32,
    rate: float = 10.0,
    zipf_s: float = 1.1,
    seed: int = 0,
) -> list[Request]:
    """`requests` prompts of `prompt_len` random tokens (nothing shared) for LoRA `adapters` with Zipf popularity
    (adapter k is asked for in proportion to 1 / (k + 1) ** zipf_s), Poisson arrivals at `rate` per second."""
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** zipf_s for k in range(len(adapters))]
    t = 0.0
    out = []
    for _ in range(requests):
        k = rng.choices(range(len(adapters)), weights)[0]
        out.append(Request(t, [{"role": "user", "content": words(rng, prompt_len)}], output_len, k,
                           model=adapters[k]))  # fmt: skip
        t += rng.expovariate(rate)
    return out


def stats(reqs: list[Request]) -> dict[str, float]:
    from agents.emulator.tokenizer import encode_chat

    n = [len(encode_chat(r.messages)) for r in reqs]
    return {"requests": len(reqs), "mean_prompt_tokens": sum(n) / max(1, len(n)),
            "span_s": reqs[-1].at if reqs else 0.0}  # fmt: skip
