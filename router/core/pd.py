"""Pair selection for disaggregated serving: which prefill target computes a prompt's KV and which decode target
pulls it and generates (sans-IO: the driver in router/pd.py hands in what it knows and gets the pair back).

Every (prefill, decode) pair is costed in seconds, as the time until the decode target can start generating:

    prefill  = (tokens queued for prefill there + the prompt's tokens it does not hold) / its prefill rate
    transfer = (prompt tokens the decode target does not hold) x KV bytes per token / link bandwidth of the pair
    decode   = requests in flight on the decode target x the cost of one

and the cheapest pair wins (ties: fewer queued prefill tokens, then fewer decodes, then the id, so the choice is
deterministic). A cached prefix shortens both the prefill (on the prefill side) and the transfer (on the decode
side: only blocks the decode target lacks are pulled, as vLLM's NixlConnector does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PrefillSide:
    id: str
    node: str
    zone: str
    queued_tokens: int  # prompt tokens sent there for prefill and not yet answered
    cached_tokens: int  # of this prompt, held in its prefix cache
    prefill_tok_s: float


@dataclass(frozen=True, slots=True)
class DecodeSide:
    id: str
    node: str
    zone: str
    inflight: int  # requests decoding there
    cached_tokens: int


@dataclass(frozen=True, slots=True)
class PairCosts:
    kv_bytes_per_token: int
    decode_s_per_request: float


@dataclass(frozen=True, slots=True)
class PairChoice:
    prefill: str
    decode: str
    prefill_s: float
    transfer_s: float
    decode_s: float
    kv_bytes: int  # moved from the prefill to the decode target
    prefill_tokens: int  # of the prompt, computed by the prefill target (the rest it holds)

    @property
    def cost_s(self) -> float:
        return self.prefill_s + self.transfer_s + self.decode_s


# bytes/s between the nodes (and zones) of a prefill and a decode target
Bandwidth = Callable[[PrefillSide, DecodeSide], float]


def cost(p: PrefillSide, d: DecodeSide, prompt_tokens: int, bw: Bandwidth, c: PairCosts) -> PairChoice:
    uncached = max(0, prompt_tokens - p.cached_tokens)
    moved = max(0, prompt_tokens - d.cached_tokens) * c.kv_bytes_per_token
    return PairChoice(
        prefill=p.id,
        decode=d.id,
        prefill_s=(p.queued_tokens + uncached) / p.prefill_tok_s,
        transfer_s=moved / bw(p, d),
        decode_s=d.inflight * c.decode_s_per_request,
        kv_bytes=moved,
        prefill_tokens=uncached,
    )


def choose_pairs(
    prompt_tokens: int,
    prefills: Sequence[PrefillSide],
    decodes: Sequence[DecodeSide],
    bw: Bandwidth,
    c: PairCosts,
) -> list[PairChoice]:
    """Every pair, cheapest first (the driver tries the first and falls back along the list)."""
    if not prefills or not decodes:
        raise ValueError("disaggregated serving needs at least one prefill and one decode target")
    load_p = {p.id: p.queued_tokens for p in prefills}
    load_d = {d.id: d.inflight for d in decodes}
    pairs = [cost(p, d, prompt_tokens, bw, c) for p in prefills for d in decodes]
    pairs.sort(key=lambda x: (x.cost_s, load_p[x.prefill], load_d[x.decode], x.prefill, x.decode))
    return pairs


def link_bandwidth(
    same_node: float, same_zone: float, cross_zone: float, measured: dict[frozenset[str], float]
) -> Bandwidth:
    """Bytes/s of a pair's link: a measured figure for the node pair, else the default of its link class (an
    unknown zone counts as the same zone)."""

    def bw(p: PrefillSide, d: DecodeSide) -> float:
        if p.node and p.node == d.node:
            return measured.get(frozenset((p.node,)), same_node)
        got = measured.get(frozenset((p.node, d.node)))
        if got is not None:
            return got
        if p.zone and d.zone and p.zone != d.zone:
            return cross_zone
        return same_zone

    return bw
