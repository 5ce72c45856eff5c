"""The project's deterministic tokenizer and chained block hashes."""

import subprocess
import sys

from agents.emulator import tokenizer as tok


def test_identical_text_identical_ids_across_processes() -> None:
    text = "You are a helpful assistant. Answer briefly, with care; cite sources!"
    ids = tok.encode(text)
    out = subprocess.run(
        [sys.executable, "-c", f"from agents.emulator.tokenizer import encode; print(encode({text!r}))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == str(ids)
    assert all(tok.NUM_SPECIAL <= i < tok.VOCAB_SIZE for i in ids)
    assert 0.15 < len(ids) / len(text) < 0.35  # about four characters per token


def test_shared_text_prefix_gives_shared_token_prefix() -> None:
    system = "word " * 100
    a = tok.encode(system + "what is the capital of France?")
    b = tok.encode(system + "how far is the moon?")
    common = tok.encode(system)
    assert a[: len(common)] == common == b[: len(common)]


def test_chat_turns_are_prefixes_of_later_turns() -> None:
    turn1 = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi there"}]
    turn2 = [*turn1, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    ids1 = tok.encode_chat(turn1, add_generation_prompt=False)
    assert tok.encode_chat(turn2)[: len(ids1)] == ids1


def test_block_hashes_chain_on_the_whole_prefix() -> None:
    ids = list(range(100, 150))  # 3 full blocks of 16 and 2 tokens left over
    hs = tok.block_hashes(ids, 16)
    assert len(hs) == 3
    assert hs[1] == tok.hash_block(hs[0], ids[16:32])
    other = [7, *ids[1:]]  # first block differs: every later hash differs too
    assert set(tok.block_hashes(other, 16)).isdisjoint(hs)
    assert tok.block_hashes(ids, 16, limit=2) == hs[:2]
    assert all(0 <= h < 1 << 64 for h in hs)
    assert tok.block_hashes(ids, 16, root=tok.root_hash("adapter-a"))[0] != hs[0]


def test_request_token_ids_forms() -> None:
    assert tok.request_token_ids({"prompt_token_ids": [5, 6, 7]}, chat=True) == [5, 6, 7]
    assert tok.request_token_ids({"prompt": [9, 10]}, chat=False) == [9, 10]
    assert tok.request_token_ids({"prompt": "a b"}, chat=False) == tok.encode("a b")
    assert tok.request_token_ids({"prompt_tokens": 10}, chat=False) is None
    for bad in ([], [1, "x"], [-1], [True]):
        try:
            tok.request_token_ids({"prompt_token_ids": bad}, chat=False)
        except ValueError as e:
            assert "prompt_token_ids" in str(e)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_the_router_hashes_a_chat_like_the_runtime_with_its_head_cache() -> None:
    from router.config import CacheConfig
    from router.prefix import request_prefix

    cfg = CacheConfig()
    msgs = [{"role": "system", "content": "abc " * 37}, {"role": "user", "content": "q1 " * 11},
            {"role": "assistant", "content": "a1 " * 9}, {"role": "user", "content": "q2 " * 30}]  # fmt: skip
    for _ in range(2):  # the second pass reads the remembered heads
        for k in range(1, 5):
            p = request_prefix("chat", {"messages": msgs[:k]}, {}, cfg)
            ids = tok.encode_chat(msgs[:k])
            assert p.hashes == tok.block_hashes(ids, 16) and p.tokens == len(ids)
    assert request_prefix("completions", {"prompt": "abc " * 40}, {}, cfg).hashes == tok.block_hashes(
        tok.encode("abc " * 40), 16
    )
