"""The emulator's prefix cache over HTTP: truthful metrics, and KV events in vLLM's ZeroMQ format, read back with
a msgpack decoder written here (independent of the library the emulator encodes with)."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from agents.emulator.testing import EmulatorProcess, running_emulator
from agents.emulator.tokenizer import block_hashes
from tests.support import free_port


def unpack(buf: bytes) -> Any:
    """Minimal MessagePack reader (the subset vLLM's events use), after the format specification."""

    def read(i: int) -> tuple[Any, int]:
        b = buf[i]
        i += 1
        if b <= 0x7F:
            return b, i
        if b >= 0xE0:
            return b - 0x100, i
        if 0x90 <= b <= 0x9F:
            return seq(i, b & 0x0F)
        if 0xA0 <= b <= 0xBF:
            n = b & 0x1F
            return buf[i : i + n].decode(), i + n
        if 0x80 <= b <= 0x8F:
            return mapping(i, b & 0x0F)
        if b in (0xDE, 0xDF):
            size = 2 if b == 0xDE else 4
            return mapping(i + size, int.from_bytes(buf[i : i + size], "big"))
        if b == 0xC0:
            return None, i
        if b in (0xC2, 0xC3):
            return b == 0xC3, i
        if b == 0xCB:
            return struct.unpack(">d", buf[i : i + 8])[0], i + 8
        ints = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
        if b in ints:
            fmt = ints[b]
            size = struct.calcsize(fmt)
            return struct.unpack(fmt, buf[i : i + size])[0], i + size
        if b in (0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6):
            size = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}[b]
            n = int.from_bytes(buf[i : i + size], "big")
            raw = buf[i + size : i + size + n]
            return (raw.decode() if b >= 0xD9 else raw), i + size + n
        if b in (0xDC, 0xDD):
            size = 2 if b == 0xDC else 4
            return seq(i + size, int.from_bytes(buf[i : i + size], "big"))
        raise AssertionError(f"unexpected msgpack byte {b:#x}")

    def mapping(i: int, n: int) -> tuple[dict[Any, Any], int]:
        out = {}
        for _ in range(n):
            k, i = read(i)
            v, i = read(i)
            out[k] = v
        return out, i

    def seq(i: int, n: int) -> tuple[list[Any], int]:
        out = []
        for _ in range(n):
            v, i = read(i)
            out.append(v)
        return out, i

    value, end = read(0)
    assert end == len(buf), "trailing bytes after the msgpack value"
    return value


@pytest.fixture(scope="module")
def em() -> Iterator[tuple[EmulatorProcess, int, int]]:
    pub, replay = free_port(), free_port()
    with running_emulator(
        "--profile", "h100", "--block-size", "16", "--kv-events-endpoint", f"tcp://*:{pub}",
        "--kv-events-replay-endpoint", f"tcp://*:{replay}", "--kv-events-topic", "kv-events",
    ) as e:  # fmt: skip
        yield e, pub, replay


def _complete(e: EmulatorProcess, ids: list[int]) -> dict[str, Any]:
    body = {"model": "demo-llm", "prompt": "", "prompt_token_ids": ids, "max_tokens": 1}
    r = httpx.post(f"{e.url}/v1/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _recv(sub: zmq.Socket, n: int) -> list[tuple[int, list[Any]]]:
    out = []
    while len(out) < n:
        assert sub.poll(5000), f"only {len(out)} of {n} event messages arrived"
        topic, seq, payload = sub.recv_multipart()
        assert topic == b"kv-events" and len(seq) == 8
        out.append((int.from_bytes(seq, "big"), unpack(payload)))
    return out


def test_prefix_reuse_metrics_and_vllm_format_events(em: tuple[EmulatorProcess, int, int]) -> None:
    e, pub, replay = em
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(f"tcp://127.0.0.1:{pub}")
    sub.setsockopt(zmq.SUBSCRIBE, b"kv-events")
    time.sleep(0.3)  # PUB/SUB slow joiner: the subscription must reach the publisher first
    try:
        shared = list(range(1000, 1032))  # two full blocks of 16
        a = [*shared, *range(1, 9)]  # 40 tokens: blocks 0, 1 full
        b = [*shared, *range(500, 516)]  # 48 tokens: shares 0, 1; block 2 new
        assert _complete(e, a)["usage"]["prompt_tokens"] == 40
        _complete(e, a)  # both full blocks hit; nothing new is stored
        _complete(e, b)
        (s1, batch1), (s2, batch2) = _recv(sub, 2)
        assert s2 == s1 + 1
        ts, events = batch1
        assert isinstance(ts, float)
        ha = block_hashes(a, 16)
        # vLLM 0.3x's layout: a map per event, the "type" tag first, then the fields in vLLM's order
        assert events == [{"type": "BlockStored", "block_hashes": ha, "parent_block_hash": None, "token_ids": shared,
                           "block_size": 16, "lora_id": None, "medium": "GPU", "lora_name": None}]  # fmt: skip
        assert list(events[0]) == ["type", "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
                                   "medium", "lora_name"]  # fmt: skip
        hb = block_hashes(b, 16)
        assert hb[:2] == ha
        assert batch2[1] == [{"type": "BlockStored", "block_hashes": [hb[2]], "parent_block_hash": ha[1],
                              "token_ids": list(range(500, 516)), "block_size": 16, "lora_id": None, "medium": "GPU",
                              "lora_name": None}]  # fmt: skip

        fams = {
            s.name: s.value
            for f in text_string_to_metric_families(httpx.get(f"{e.url}/metrics").text)
            for s in f.samples
        }
        assert fams["vllm:prefix_cache_queries_total"] == 40 + 40 + 48
        assert fams["vllm:prefix_cache_hits_total"] == 0 + 32 + 32
        assert fams["vllm:kv_cache_usage_perc"] == 0.0  # all requests are done; cached blocks are free

        # replay from 0: the start-up AllBlocksCleared (sent before we subscribed), both batches, then the end mark
        req = ctx.socket(zmq.DEALER)  # a REQ socket would take only the first of the many replies
        req.connect(f"tcp://127.0.0.1:{replay}")
        req.send_multipart([b"", (0).to_bytes(8, "big")])
        got = []
        while True:
            assert req.poll(5000)
            empty, topic, seq_bytes, payload = req.recv_multipart()  # vLLM 0.3x's replay frames carry the topic
            assert empty == b"" and topic in (b"kv-events", b"")
            if not payload:
                assert int.from_bytes(seq_bytes, "big", signed=True) == -1
                break
            got.append((int.from_bytes(seq_bytes, "big"), unpack(payload)[1]))
        assert got[0] == (0, [{"type": "AllBlocksCleared"}])
        assert got[-2:] == [(s1, events), (s2, batch2[1])]
        req.close(0)
    finally:
        sub.close(0)
        ctx.term()
