"""Disaggregated serving, the driver: a model with targets of role `prefill` and `decode` has each chat or
completion request prefilled on one and decoded on another, the way vLLM's disaggregated serving proxies do it.

1. The pair comes from router/core/pd.py: queued prefill tokens (this router's own count), the prefix each target
   holds (the KV-block index: KV events, or what was routed), decode load, and the cost of moving the KV over the
   pair's link (config link classes, or measured figures per node pair).
2. The prefill target gets the request with `max_tokens: 1`, `stream: false` and `kv_transfer_params` asking for a
   remote decode (agents/emulator/kvtransfer.py); it answers with the params naming its blocks.
3. The decode target gets the original request plus those params, and its answer (streamed or not) goes back to
   the client through the ordinary path (router/app.py's stream_back), retries on other decode targets included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter, Histogram

from agents.emulator import kvtransfer
from agents.signals.prefixindex import default_index
from router.config import DisaggregationConfig, RoutingPolicy
from router.core.pd import DecodeSide, PairChoice, PairCosts, PrefillSide, choose_pairs, link_bandwidth
from router.forward import Forwarder, ForwardError
from router.prefix import RequestPrefix
from router.upstream import UpstreamError
from router.view import Target, TargetView

APIS = frozenset({"chat", "completions"})
_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

PD_REQUESTS = Counter(
    "infermesh_router_pd_requests_total",
    "Disaggregated requests by how the prefill stage ended (ok, no_kv_params: decoded without a transfer, failed)",
    ["model", "outcome"],
)
PD_PREFILL = Histogram(
    "infermesh_router_pd_prefill_seconds", "Prefill stage as the router saw it", ["model"], buckets=_BUCKETS
)
PD_TRANSFER = Histogram(
    "infermesh_router_pd_kv_transfer_seconds",
    "Modelled KV transfer time of the chosen pair (bytes over the link's bandwidth)",
    ["model"],
    buckets=_BUCKETS,
)
PD_KV_BYTES = Counter("infermesh_router_pd_kv_bytes_total", "KV bytes moved from prefill to decode targets", ["model"])


def _gbps(v: float) -> float:
    return v * 1e9 / 8


class Disaggregation:
    def __init__(self, cfg: DisaggregationConfig, view: TargetView, forwarder: Forwarder, block_size: int) -> None:
        self.cfg = cfg
        self.view = view
        self.forwarder = forwarder
        self.block_size = block_size
        self.costs = PairCosts(cfg.kv_bytes_per_token, cfg.decode_s_per_request)
        measured = {frozenset((link.a, link.b)): _gbps(link.gbps) for link in cfg.links}
        self.bandwidth = link_bandwidth(
            _gbps(cfg.same_node_gbps), _gbps(cfg.same_zone_gbps), _gbps(cfg.cross_zone_gbps), measured
        )
        self.queued: dict[str, int] = {}  # prefill target id -> prompt tokens sent there and not yet answered

    def serves(self, model: str, api: str = "chat") -> bool:
        """Whether requests of `model` on `api` are disaggregated: it has targets of both roles."""
        if api not in APIS:
            return False
        roles = {t.role for t in self.view.all(model)}
        return "prefill" in roles and "decode" in roles

    @staticmethod
    def without_prefill(candidates: list[Target]) -> list[Target]:
        """Targets for a request that is not disaggregated (other APIs): a prefill target would stop at the first
        token; a decode target prefills locally."""
        rest = [t for t in candidates if t.role != "prefill"]
        return rest or candidates

    def pools(self, model: str) -> tuple[list[Target], list[Target]]:
        ts = self.view.candidates(model) or self.view.all(model)
        return [t for t in ts if t.role == "prefill"], [t for t in ts if t.role == "decode"]

    def choose(self, model: str, prompt_tokens: int, hashes: list[int]) -> tuple[list[PairChoice], dict[str, Target]]:
        prefills, decodes = self.pools(model)
        index = default_index()
        bs = self.block_size

        def held(t: Target) -> int:
            return min(prompt_tokens, index.match(t.url, hashes) * bs) if hashes else 0

        def rate(t: Target) -> float:
            learnt = index.targets.get(t.url)
            return learnt.prefill_tok_s if learnt is not None and learnt.prefill_tok_s else self.cfg.prefill_tok_s

        p_sides = [PrefillSide(t.id, t.node, t.zone, self.queued.get(t.id, 0), held(t), rate(t)) for t in prefills]
        d_sides = [DecodeSide(t.id, t.node, t.zone, t.inflight, held(t)) for t in decodes]
        pairs = choose_pairs(prompt_tokens, p_sides, d_sides, self.bandwidth, self.costs)
        return pairs, {t.id: t for t in (*prefills, *decodes)}

    async def prefill(
        self,
        *,
        model: str,
        obj: Mapping[str, Any],
        prompt_tokens: int,
        prefix: RequestPrefix | None,
        path: str,
        headers: Mapping[str, str],
        policy: RoutingPolicy,
        first_byte_timeout: float,
        extra: dict[str, object],
    ) -> tuple[list[Target], Callable[[Target], bytes]]:
        """Run the prefill stage: returns the decode targets, best first, and the body each is sent."""
        hashes = prefix.hashes if prefix is not None else []
        tokens = prefix.tokens if prefix is not None and prefix.tokens else prompt_tokens
        pairs, by_id = self.choose(model, tokens, hashes)
        best = pairs[0]
        order = list(dict.fromkeys(p.prefill for p in pairs))
        ask: dict[str, Any] = {
            **obj,
            "max_tokens": 1,
            "stream": False,
            "kv_transfer_params": kvtransfer.PREFILL_REQUEST,
        }
        ask.pop("stream_options", None)
        if "max_completion_tokens" in ask:
            ask["max_completion_tokens"] = 1

        def prefill_body(t: Target) -> bytes:
            return json.dumps({**ask, "model": t.upstream_model}).encode()

        uncached = best.prefill_tokens
        self.queued[best.prefill] = self.queued.get(best.prefill, 0) + uncached
        t0 = time.monotonic()
        try:
            w = await self.forwarder.open(
                [by_id[i] for i in order], path, prefill_body, headers, policy, model, False, first_byte_timeout
            )
            try:
                body = w.first + await w.resp.read()
                w.resp.release()
            except UpstreamError as e:
                w.resp.close()
                raise ForwardError(
                    502, "prefill_broken", f"prefill target broke mid-answer: {e!r}", w.attempts
                ) from None
            except BaseException:
                w.resp.close()  # the runtime sees the drop and aborts the prefill
                raise
            finally:
                w.target.inflight -= 1
                w.target.on_done(time.monotonic())
        except ForwardError:
            PD_REQUESTS.labels(model, "failed").inc()
            raise
        finally:
            left = self.queued.get(best.prefill, 0) - uncached
            if left > 0:
                self.queued[best.prefill] = left
            else:
                self.queued.pop(best.prefill, None)
        took = time.monotonic() - t0
        if w.resp.status != 200:
            PD_REQUESTS.labels(model, "failed").inc()
            raise ForwardError(w.resp.status, "prefill_failed", _error_message(body, w.resp.status), w.attempts)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        params = answer.get("kv_transfer_params") if isinstance(answer, dict) else None
        # The decodes in the order of their pairs with the prefill target that answered.
        decodes = [by_id[p.decode] for p in pairs if p.prefill == w.target.id]
        chosen = next(p for p in pairs if p.prefill == w.target.id)
        index = default_index()
        if hashes:
            index.note_routed(w.target.url, hashes, tokens, self.block_size)
            index.note_routed(decodes[0].url, hashes, 0, self.block_size)
        PD_PREFILL.labels(model).observe(took)
        extra["pd_prefill"] = w.target.id
        extra["pd_prefill_ms"] = round(took * 1000, 3)
        if not isinstance(params, dict):
            # a prefill runtime without a KV connector: the decode target prefills again (as vLLM's proxies do)
            PD_REQUESTS.labels(model, "no_kv_params").inc()
            extra["pd_kv_params"] = False
            params = None
        else:
            PD_REQUESTS.labels(model, "ok").inc()
            PD_TRANSFER.labels(model).observe(chosen.transfer_s)
            PD_KV_BYTES.labels(model).inc(chosen.kv_bytes)
            extra["pd_transfer_ms"] = round(chosen.transfer_s * 1000, 3)

        def decode_body(t: Target) -> bytes:
            out: dict[str, Any] = {**obj, "model": t.upstream_model}
            if params is not None:
                out["kv_transfer_params"] = params
            return json.dumps(out).encode()

        return decodes, decode_body


def _error_message(body: bytes, status: int) -> str:
    try:
        err = json.loads(body).get("error")
        msg = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        msg = None
    return f"prefill target answered {status}: {msg or body[:200].decode(errors='replace')}"
