"""The discrete-event core: routers running the router's own `StrategyHost` and strategy objects, nodes modelled by
`agents.sim.runtime`, signals published with staleness, hedging, retries and scheduled faults.

Sans-IO and deterministic: one heap of (time, sequence, kind, payload) events, every random draw from generators
seeded by the config's seed, the host's clock is the simulated clock. Nothing reads the wall clock except the
optional progress callback.

What a router sees (documented in docs/parts/simulator.md): one router per cell; in the "full" view it tracks every
target of the fleet, in the "cell" view its own cell's targets plus a fixed random sample of other cells' targets
(`routing.remote_sample`), which is what keeps 131,072 nodes x 128 routers within memory and time. Each router
ranks what it tracks with the strategy's own sampling (`rank` never scans the fleet).
"""

from __future__ import annotations

import gc
import heapq
import math
import random
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from agents.sim.config import SimConfig, resolve_profile
from agents.sim.network import Topology
from agents.sim.runtime import DONE, FIRST, Copy, GpuClass, Node
from agents.sim.workload import Generator
from agents.strategies import load_strategy
from agents.strategies.base import HEALTHY, UNHEALTHY, RouteRequest, Strategy, TargetView
from agents.strategies.builtins import BaselineRR
from agents.strategies.host import StrategyHost
from router.core.hedging import HedgeBudget, HedgeParams, HedgeWins, LatencyWindow, hedge_delay, predicted_delay

# event kinds, most frequent first (the loop tests them in this order)
WAKE, NODE_ARRIVE, DELIVER, PUBLISH, ARRIVAL, CLIENT_FIRST, HEDGE, ABORT, FAIL_NOTICE, REFRESH, FAULT = range(11)

# `Simulation._view` builds a TargetView positionally: these are its first fields, in order (the rest keep defaults)
_VIEW_FIELDS = (
    "target_id", "model", "node", "endpoint", "revision", "runtime", "zone", "quant", "mig_profile", "gpu_uuids",
    "health", "routable", "loaded", "warming", "requests_waiting", "requests_running", "max_concurrency",
    "kv_cache_usage", "vram_used_frac", "tokens_per_s", "ttft_p95_s", "latency_p95_s", "ewma_latency_s", "ewma_ttft_s",
    "service_rate_rps", "work_left_s", "error_rate", "freshness", "cost_per_mtok", "inflight", "version",
)  # fmt: skip
if tuple(f.name for f in fields(TargetView))[: len(_VIEW_FIELDS)] != _VIEW_FIELDS:
    raise ImportError("agents.sim.core builds TargetView positionally and its fields changed: update _VIEW_FIELDS")

_SEEDS = ("arrivals", "network", "nodes", "routers", "faults", "sample")


class Req:
    __slots__ = (
        "copies",
        "done_at",
        "failed",
        "first_at",
        "hedged",
        "held_s",
        "kind",
        "n_copies",
        "out",
        "prompt",
        "ranked",
        "retries",
        "rid",
        "router",
        "t0",
        "tenant",
        "tried",
        "winner",
    )

    def __init__(self, rid: int, t0: float, router: Router, kind: int, prompt: int, out: int, tenant: int) -> None:
        self.rid = rid
        self.t0 = t0
        self.router = router
        self.kind = kind
        self.prompt = prompt
        self.out = out
        self.tenant = tenant
        self.copies: list[Copy] = []  # emptied once answered (with `winner`), so that no cycle keeps it alive
        self.n_copies = 0  # copies sent
        self.first_at = -1.0
        self.done_at = -1.0
        self.failed = False
        self.hedged = False
        self.held_s = 0.0  # time held at the router for a batch slot (hold_when_full)
        self.retries = 0
        self.ranked: list[str] = []
        self.tried: set[str] = set()
        self.winner: Copy | None = None


class Router:
    """One router (one per cell): its strategy host, its hedging state and the targets it tracks."""

    def __init__(
        self, idx: int, cell: int, host: StrategyHost, strategy: str, hedging: HedgeParams, budget: HedgeBudget
    ):
        self.idx = idx
        self.cell = cell
        self.node_id = f"c{cell}-router"
        self.host = host
        self.strategy = strategy
        self.hedge_params = hedging
        self.budget = budget
        self.window = LatencyWindow(128)
        self.wins = HedgeWins()
        chosen = host.strategies[strategy]
        # the strategy learns from outcomes and predicts TTFT (hybrid_mesh), or not (None)
        self.learn: Callable[..., None] | None = getattr(chosen, "observe_outcome", None)
        self.predict: Callable[[TargetView, RouteRequest], float] | None = getattr(chosen, "predicted_ttft", None)
        self.trusted: Callable[[], bool] | None = getattr(chosen, "prediction_trusted", None)
        self.seen: dict[int, int] = {}  # node index -> newest state version applied (gossip drops older ones)
        # the router's hold-at-router queue (`hold_when_full`): its own requests in flight per target, the batch
        # slots free by that count over what it tracks, and the requests held until one frees
        self.inflight: dict[int, int] = {}
        self.slots: dict[int, int] = {}  # batch slots per target, known or learnt (none: unknown, always usable)
        self.unknown = 0  # tracked targets whose slots are unknown
        self.free = 0
        self.held: deque[Req] = deque()


@dataclass(slots=True)
class Recorder:
    """Per-request outcomes in compact arrays (8 bytes a value)."""

    t0: array = field(default_factory=lambda: array("d"))
    ttft: array = field(default_factory=lambda: array("d"))
    e2e: array = field(default_factory=lambda: array("d"))
    wait: array = field(default_factory=lambda: array("d"))  # queue time: held at the router + at the node
    gpu: array = field(default_factory=lambda: array("i"))  # GPU class index of the answering node
    cell_hop: array = field(default_factory=lambda: array("b"))  # 1 when answered from another cell
    hedged: array = field(default_factory=lambda: array("b"))
    kind: array = field(default_factory=lambda: array("b"))
    out_tokens: array = field(default_factory=lambda: array("i"))


@dataclass(slots=True)
class RunResult:
    strategy: str
    config: SimConfig
    classes: list[GpuClass]
    rec: Recorder
    arrivals: int
    completed: int
    failed: int
    unfinished: int
    hedges: int
    hedge_wins: int
    retries: int
    events: int
    wall_s: float = 0.0
    routers: int = 0
    view: str = ""
    tracked_per_router: int = 0
    vivaldi_median_error: float = 0.0
    fleet_cost: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _view_mode(cfg: SimConfig) -> str:
    r = cfg.routing
    if r.view != "auto":
        return r.view
    return "full" if cfg.topology.cells * cfg.topology.nodes <= r.full_view_limit else "cell"


def _hedge_params(cfg: SimConfig) -> HedgeParams:
    h = cfg.routing.hedging
    return HedgeParams(
        quantile=h.quantile,
        multiplier=h.multiplier,
        min_delay_s=h.min_delay_ms / 1000,
        max_delay_s=h.max_delay_ms / 1000,
        default_delay_s=h.default_delay_ms / 1000,
    )


class Simulation:
    """One run of one strategy over the config's fleet and workload."""

    def __init__(
        self,
        cfg: SimConfig,
        strategy: str,
        *,
        progress: Callable[[float, float, int], None] | None = None,
        strategy_factory: Callable[[str], Strategy] | None = None,
    ) -> None:
        self.cfg = cfg
        self.strategy_spec = strategy
        self.progress = progress
        self.now = 0.0
        seeds = random.Random(cfg.seed)
        self.rngs = {name: random.Random(seeds.getrandbits(64)) for name in _SEEDS}
        self.events: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self.view_mode = _view_mode(cfg)
        topo_cfg = cfg.topology
        self.topo = Topology(cfg.network, topo_cfg.cells, topo_cfg.regions, self.rngs["network"])
        self.model = cfg.workload.model
        self.hold = cfg.routing.hold_when_full
        self.report_conc = cfg.signals.report_max_concurrency
        self._build_fleet()
        self._build_routers(strategy_factory or (lambda spec: load_strategy(spec)))
        self.gen = Generator(cfg.workload, self.rngs["arrivals"])
        self.rec = Recorder()
        self.arrivals = 0
        self.completed = 0
        self.failed = 0
        self.hedges = 0
        self.hedge_wins = 0
        self.retries = 0
        self.n_events = 0
        self._rid = 0
        self._copy_seq = 0
        self.hedging = cfg.routing.hedging.enabled
        self.held_total = 0
        self._live: dict[int, Req] = {}

    # -- construction --------------------------------------------------------------------------------------------
    def _build_fleet(self) -> None:
        cfg = self.cfg
        t = cfg.topology
        bins = max(1, math.ceil(cfg.end_s / cfg.output.bin_s))
        self.classes: list[GpuClass] = []
        for g in t.gpus:
            profile = resolve_profile(g)
            seqs = g.max_num_seqs or t.max_num_seqs
            price = t.prices_per_hour.get(g.type, 0.0) * (profile.prefill_tok_s / resolve_base(g).prefill_tok_s)
            # $ per million tokens at a full batch: what a runtime would advertise as cost_per_mtok
            full_tok_s = seqs / profile.decode_step_s(seqs, seqs * 512)
            cost = price / 3600.0 / full_tok_s * 1e6 if price else 0.0
            self.classes.append(
                GpuClass(
                    len(self.classes), profile.name, g.type, profile, seqs, price, cost,
                    bins=[0.0] * bins, bin_s=cfg.output.bin_s,
                )
            )  # fmt: skip
        # Each cell gets the mix in proportion (largest remainder), laid out in a shuffled order per cell.
        counts = _apportion([g.share for g in t.gpus], t.nodes_per_cell)
        layout: list[int] = []
        for ci, n in enumerate(counts):
            layout.extend([ci] * n)
        rng = self.rngs["nodes"]
        pub = cfg.signals.publish_ms
        self.nodes: list[Node] = []
        self.node_by_id: dict[str, Node] = {}
        self.cell_of: dict[str, int] = {}
        self.cell_nodes: list[list[int]] = []
        for c in range(t.cells):
            order = layout[:]
            rng.shuffle(order)
            members = []
            for i, ci in enumerate(order):
                cls = self.classes[ci]
                nid = f"c{c}-n{i}"
                node = Node(len(self.nodes), nid, c, cls, rng.uniform(pub.min, pub.max) / 1000.0)
                cls.nodes += 1
                self.nodes.append(node)
                self.node_by_id[nid] = node
                self.cell_of[nid] = c
                members.append(node.idx)
            self.cell_nodes.append(members)
            self.cell_of[f"c{c}-router"] = c
        self._rtt_estimate = self._rtt_fn()

    def _rtt_fn(self) -> Callable[[str, str], float]:
        """The strategies' RTT estimate between two nodes (the topology service's view, by cell). A closure over
        the tables: strategies ask it on every key they compute (millions of calls in a run)."""
        cell_of = self.cell_of.get
        est = self.topo.rtt_est

        def rtt_estimate(src: str, dst: str) -> float:
            a = cell_of(src)
            b = cell_of(dst)
            if a is None or b is None:
                return 0.001
            return est[a][b]

        return rtt_estimate

    def _build_routers(self, factory: Callable[[str], Strategy]) -> None:
        cfg = self.cfg
        rng = self.rngs["routers"]
        sample_rng = self.rngs["sample"]
        hp = _hedge_params(cfg)
        h = cfg.routing.hedging
        self.routers: list[Router] = []
        n = len(self.nodes)
        subs: list[list[int]] = [[] for _ in range(n)]
        for c in range(cfg.topology.cells):
            strat = factory(self.strategy_spec)
            set_rtt = getattr(strat, "set_rtt", None)
            if callable(set_rtt):
                set_rtt(self._rtt_estimate)
            strategies: dict[str, Strategy] = {strat.name: strat}
            if BaselineRR.name not in strategies:
                strategies[BaselineRR.name] = BaselineRR()
            host = StrategyHost(
                strategies,
                default=strat.name,
                budget_us=1e12,  # the simulated clock does not move during a decision
                rng=random.Random(rng.getrandbits(64)),
                clock=self._clock,
            )
            router = Router(c, c, host, strat.name, hp, HedgeBudget(h.budget_ratio, h.budget_burst))
            router.wins.min_win_rate = h.min_win_rate
            self.routers.append(router)
            tracked: Sequence[int]
            if self.view_mode == "full":
                tracked = range(n)
            else:
                own = self.cell_nodes[c]
                k = min(cfg.routing.remote_sample, n - len(own))
                remote: list[int] = []
                if k > 0:
                    picked: set[int] = set(own)
                    while len(remote) < k:
                        j = sample_rng.randrange(n)
                        if j not in picked:
                            picked.add(j)
                            remote.append(j)
                tracked = [*own, *sorted(remote)]
            for j in tracked:
                subs[j].append(c)
                host.upsert(self._view(self.nodes[j]))
                router.inflight[j] = 0
                if self.report_conc:
                    router.slots[j] = self.nodes[j].cls.max_num_seqs
                    router.free += router.slots[j]
                else:
                    router.unknown += 1
            host.refresh()
        routers = self.routers
        for node, s in zip(self.nodes, subs, strict=True):
            node.subs = tuple(s)
            # who hears its publications: its own cell's router (one intra-cell delay), the others (one gossip delay)
            node.subs_local = tuple(routers[r] for r in s if r == node.cell)
            node.subs_remote = tuple(routers[r] for r in s if r != node.cell)

    def _clock(self) -> float:
        return self.now

    def _view(self, node: Node, state: tuple[Any, ...] | None = None) -> TargetView:
        if state is None:
            state = (
                node.version,
                node.waiting_n,
                node.running,
                node.kv_used,
                node.ewma_lat,
                node.ewma_ttft,
                node.alive,
            )
        version, waiting, running, kv_used, ewma, ewma_ttft, alive = state
        cls = node.cls
        nid = node.node_id
        # the agent's fusion: service rate by Little's law from the latency EWMA, work left = requests / rate
        rate = (running if running > 1 else 1) / ewma if ewma > 0 else 0.0
        # Positional, in `_VIEW_FIELDS` order (checked at import): every delivery to every router builds one, and
        # keyword matching over 35 fields was a twentieth of a small run.
        return TargetView(
            nid,  # target_id
            self.model,  # model
            nid,  # node
            "",  # endpoint
            "",  # revision
            "",  # runtime
            node.zone,  # zone
            "",  # quant
            cls.profile.mig_profile,  # mig_profile
            (),  # gpu_uuids
            HEALTHY if alive else UNHEALTHY,  # health
            alive,  # routable
            True,  # loaded
            False,  # warming
            float(waiting),  # requests_waiting
            float(running),  # requests_running
            cls.max_num_seqs if self.report_conc else None,  # max_concurrency
            kv_used / node.kv_cap,  # kv_cache_usage
            None,  # vram_used_frac
            None,  # tokens_per_s
            None,  # ttft_p95_s
            None,  # latency_p95_s
            ewma,  # ewma_latency_s
            ewma_ttft,  # ewma_ttft_s
            rate,  # service_rate_rps
            (waiting + running) / rate if rate > 0 else 0.0,  # work_left_s
            0.0,  # error_rate
            1.0,  # freshness
            cls.cost_per_mtok,  # cost_per_mtok
            0,  # inflight
            version,  # version
        )

    # -- scheduling ------------------------------------------------------------------------------------------------
    def _at(self, t: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, kind, payload))

    def _reschedule(self, node: Node, changed: bool = True) -> None:
        node.gen += 1
        t = node.next_wake()
        if t != math.inf:
            self._at(t, WAKE, (node, node.gen))
        if changed:
            self._changed(node)

    def _changed(self, node: Node) -> None:
        """The node's state changed: publish it at most once per period."""
        node.version += 1
        if not node.pub_pending:
            node.pub_pending = True
            due = node.last_pub + node.period
            self._at(due if due > self.now else self.now, PUBLISH, node)

    # -- run ---------------------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        import time

        wall0 = time.perf_counter()
        # Requests and their copies refer to each other until answered (a failed request's stay so), so the collector
        # runs, and a full collection walks every object alive: the fleet, the routers' views and strategies, which
        # live all run. Frozen, they are not walked; a larger first generation collects less often (a seventh of the
        # CPU before).
        gc.collect()
        gc.freeze()
        thresholds = gc.get_threshold()
        gc.set_threshold(50_000, 20, 100)
        try:
            return self._run(wall0)
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()

    def _run(self, wall0: float) -> RunResult:
        import time

        cfg = self.cfg
        end = cfg.end_s
        duration = cfg.duration_s
        first = self.gen.next()
        self._at(first.t, ARRIVAL, first)
        refresh = cfg.routing.refresh_ms / 1000.0
        for r in self.routers:
            self._at(refresh * (r.idx + 1) / len(self.routers), REFRESH, r)
        self._schedule_faults()
        events = self.events
        pop = heapq.heappop
        progress = self.progress
        # the handlers as locals: the loop runs about ten times a request
        on_wake, on_node_arrive, on_deliver = self._on_wake, self._on_node_arrive, self._on_deliver
        on_publish, on_arrival, next_arrival = self._on_publish, self._on_arrival, self.gen.next
        n = self.n_events
        tick = 0
        try:
            while events:
                t, _, kind, p = pop(events)
                if t > end:
                    break
                self.now = t
                n += 1
                if kind == WAKE:
                    node, gen = p
                    if gen == node.gen:
                        on_wake(node, t)
                elif kind == NODE_ARRIVE:
                    on_node_arrive(p, t)
                elif kind == DELIVER:
                    on_deliver(*p)
                elif kind == PUBLISH:
                    on_publish(p, t)
                elif kind == ARRIVAL:
                    on_arrival(p, t)
                    nxt = next_arrival()
                    if nxt.t < duration:
                        self._at(nxt.t, ARRIVAL, nxt)
                elif kind == CLIENT_FIRST:
                    self._on_client_first(p, t)
                elif kind == HEDGE:
                    self._on_hedge(p, t)
                elif kind == ABORT:
                    node = p.node
                    if node.alive and not p.cancelled and not p.failed:
                        node.advance(t)
                        node.cancel(p, t)
                        node.admit_waiting(t)
                        self._reschedule(node)
                elif kind == FAIL_NOTICE:
                    self._on_fail_notice(p, t)
                elif kind == REFRESH:
                    p.host.refresh()
                    if t + refresh < duration:
                        self._at(t + refresh, REFRESH, p)
                elif kind == FAULT:
                    self._on_fault(p, t)
                if progress is not None:
                    tick += 1
                    if tick >= 20_000:
                        tick = 0
                        self.n_events = n
                        progress(t, end, n)
        finally:
            self.n_events = n
        stop = min(self.now, end) if events else self.now
        for node in self.nodes:
            node.close(stop)
        if progress is not None:
            progress(end, end, self.n_events)
        hours = cfg.duration_s / 3600.0
        fleet_cost = sum(c.nodes * c.price_per_hour for c in self.classes) * hours
        tracked = sum(len(r.host.index) for r in self.routers) // max(1, len(self.routers))
        return RunResult(
            strategy=self.routers[0].strategy if self.routers else self.strategy_spec,
            config=cfg,
            classes=self.classes,
            rec=self.rec,
            arrivals=self.arrivals,
            completed=self.completed,
            failed=self.failed,
            unfinished=self.arrivals - self.completed - self.failed,
            hedges=self.hedges,
            hedge_wins=self.hedge_wins,
            retries=self.retries,
            events=self.n_events,
            wall_s=time.perf_counter() - wall0,
            routers=len(self.routers),
            view=self.view_mode,
            tracked_per_router=tracked,
            vivaldi_median_error=self.topo.median_estimate_error(),
            fleet_cost=fleet_cost,
        )

    # -- requests ----------------------------------------------------------------------------------------------------
    def _on_arrival(self, a: Any, t: float) -> None:
        self.arrivals += 1
        cells = self.cfg.topology.cells
        router = self.routers[self.rngs["network"].randrange(cells)] if cells > 1 else self.routers[0]
        self._rid += 1
        req = Req(self._rid, t, router, a.kind, a.prompt_tokens, a.output_tokens, a.tenant)
        router.budget.on_request()
        self._live[req.rid] = req
        if self.hold and (router.held or (router.free <= 0 and not router.unknown)):
            # every batch slot this router knows of is taken by its own requests: held, FIFO, until one frees
            router.held.append(req)
            self.held_total += 1
            return
        self._route(req, t)

    def _route(self, req: Req, t: float) -> None:
        router = req.router
        request = RouteRequest(
            model=self.model,
            tenant=str(req.tenant),
            prompt_tokens=req.prompt,
            max_tokens=req.out,
            client_node=router.node_id,
            exclude=frozenset(req.tried),
            request_id=str(req.rid),
        )
        decision = router.host.decide(request, strategy=router.strategy, k=self.cfg.routing.k)
        if not decision.ranked:
            self._fail(req)
            return
        req.ranked = [s.target.target_id for s in decision.ranked]
        if self.hold:
            # as the router: targets that can start the request now (a batch slot free by its own count) first,
            # in the strategy's order
            nodes, inflight, slots = self.node_by_id, router.inflight, router.slots
            free = [tid for tid in req.ranked if inflight.get(nodes[tid].idx, 0) < slots.get(nodes[tid].idx, 1 << 30)]
            if free and free[0] != req.ranked[0]:
                req.ranked = free + [tid for tid in req.ranked if tid not in free]
        router.host.commit(decision, request, req.ranked[0])  # booked by the strategy asked; _send counts it
        self._send(req, req.ranked[0], t + self.cfg.routing.decision_us / 1e6)
        if self.hedging and len(req.ranked) > 1 and not req.hedged:
            delay = hedge_delay(router.window, router.hedge_params)
            if router.predict is not None and router.trusted is not None and router.trusted():
                # hedge when the strategy's own predicted TTFT is overrun (plus the way there and back)
                best = next(s.target for s in decision.ranked if s.target.target_id == req.ranked[0])
                rtt = self._rtt_estimate(router.node_id, best.node)
                pred = router.predict(best, request) + rtt
                factor = self.cfg.routing.hedging.predicted_factor
                delay = min(delay, predicted_delay(pred, factor, router.hedge_params))
            self._at(t + delay, HEDGE, req)

    def _send(self, req: Req, target_id: str, t: float) -> None:
        node = self.node_by_id[target_id]
        req.tried.add(target_id)
        router = req.router
        router.host.note_assigned(target_id)
        n = router.inflight.get(node.idx)
        if n is not None:
            router.inflight[node.idx] = n + 1
            if n < router.slots.get(node.idx, -1):
                router.free -= 1
        rtt = self.topo.sample_rtt(req.router.cell, node.cell, self.rngs["network"])
        self._copy_seq += 1
        c = Copy(req, node, rtt / 2, self._copy_seq)
        req.copies.append(c)
        req.n_copies += 1
        self._at(t + c.owd, NODE_ARRIVE, c)

    def _release(self, c: Copy) -> None:
        if not c.noted:
            c.noted = True
            router: Router = c.req.router  # type: ignore[attr-defined]
            node = c.node
            router.host.note_finished(node.node_id)
            n = router.inflight.get(node.idx)
            if n is not None and n > 0:
                router.inflight[node.idx] = n - 1
                if n <= router.slots.get(node.idx, -1):
                    router.free += 1
                if router.held and (router.free > 0 or router.unknown):
                    # a request finished: the longest-held one goes now, where a slot is free
                    held = router.held.popleft()
                    held.held_s = self.now - held.t0
                    self._route(held, self.now)

    def _on_node_arrive(self, c: Copy, t: float) -> None:
        if c.cancelled:
            return
        node = c.node
        if not node.alive:
            c.failed = True
            self._at(t + c.owd, FAIL_NOTICE, c)  # connection refused
            return
        node.advance(t)
        node.arrive(c, t)
        self._reschedule(node)

    def _on_wake(self, node: Node, t: float) -> None:
        node.advance(t)
        alpha = self.cfg.signals.ewma_alpha
        counts = (node.running, node.waiting_n)
        for kind, c in node.due(t):
            if kind == FIRST:
                c.first_at = t
                ttft = t - c.arrived_at
                node.ewma_ttft = ttft if node.ewma_ttft == 0 else node.ewma_ttft + alpha * (ttft - node.ewma_ttft)
                if c.req.n_copies > 1:  # type: ignore[attr-defined]
                    self._at(t + c.owd, CLIENT_FIRST, c)  # copies race: the first to reach the client wins
                else:
                    self._client_first(c, t + c.owd)
            elif kind == DONE:
                lat = t - c.arrived_at
                node.ewma_lat = lat if node.ewma_lat == 0 else node.ewma_lat + alpha * (lat - node.ewma_lat)
                c.finished_at = t
                req: Req = c.req  # type: ignore[assignment]
                if req.done_at >= 0 or req.failed:
                    self._release(c)  # a loser of the race (its abort on the way) or a lost request
                elif req.winner is c:
                    self._complete(req, c, t + c.owd)
                elif req.winner is None:
                    pass  # its first token is still on the way to the client (hedging): completed there
                else:
                    self._release(c)
        node.admit_waiting(t)
        # a first token alone changes no count a strategy reads: its TTFT rides on the next publication
        self._reschedule(node, (node.running, node.waiting_n) != counts)

    def _client_first(self, c: Copy, t: float) -> None:
        req: Req = c.req  # type: ignore[assignment]
        if req.first_at >= 0 or req.failed:
            return
        req.first_at = t
        req.winner = c
        req.router.window.add(t - req.t0)
        for other in req.copies:
            if other is not c and not other.cancelled and not other.failed:
                self._release(other)
                if other.finished_at < 0:
                    self._at(t + other.owd, ABORT, other)  # the loser is cancelled at its runtime
        if c.finished_at >= 0:  # the whole answer was already on its way
            self._complete(req, c, c.finished_at + c.owd)

    def _on_client_first(self, c: Copy, t: float) -> None:
        if c.cancelled or c.failed:
            return
        req: Req = c.req  # type: ignore[assignment]
        if req.first_at < 0 and req.hedged:
            first_copy = req.copies[0]
            req.router.wins.record(self.node_by_id[req.ranked[0]].cls.name, c is not first_copy)
            if c is not first_copy:
                self.hedge_wins += 1
        self._client_first(c, t)

    def _complete(self, req: Req, c: Copy, t: float) -> None:
        req.done_at = t
        self._release(c)
        self.completed += 1
        self._live.pop(req.rid, None)
        rec = self.rec
        node = c.node
        learn = req.router.learn
        if learn is not None:
            learn(str(req.rid), node.node_id, req.first_at - req.t0, t - req.t0, req.out)
        rec.t0.append(req.t0)
        rec.ttft.append(req.first_at - req.t0)
        rec.e2e.append(t - req.t0)
        rec.wait.append(req.held_s + c.admitted_at - c.arrived_at)
        rec.gpu.append(node.cls.index)
        rec.cell_hop.append(1 if node.cell != req.router.cell else 0)
        rec.hedged.append(1 if req.hedged else 0)
        rec.kind.append(req.kind)
        rec.out_tokens.append(req.out)
        # The race is over: the request and its copies stop referring to each other, so it is freed as soon as the
        # last event naming it has gone (a cycle waits for the collector; kept past a few collections, for a full one).
        req.copies.clear()
        req.winner = None

    def _fail(self, req: Req) -> None:
        if not req.failed:
            req.failed = True
            self.failed += 1
            self._live.pop(req.rid, None)

    def _on_hedge(self, req: Req, t: float) -> None:
        if (0 <= req.first_at <= t) or req.failed or req.hedged or req.done_at >= 0:
            return
        if req.first_at > t:
            # the first token is on the wire: the router hedges, and the copy loses (counted, not simulated)
            if req.router.budget.try_spend():
                req.hedged = True
                self.hedges += 1
            return
        primary = self.node_by_id[req.ranked[0]].cls.name
        if not req.router.wins.worth(primary):
            return  # hedges from this GPU type never win here: they would only add load
        if not req.router.budget.try_spend():
            return
        # to other hardware first (a throttled or slower GPU type slows every copy on it), else the next ranked
        rest = [tid for tid in req.ranked[1:] if tid not in req.tried]
        other = [tid for tid in rest if self.node_by_id[tid].cls.name != primary]
        for tid in other or rest:
            req.hedged = True
            self.hedges += 1
            self._send(req, tid, t)
            return

    def _on_fail_notice(self, c: Copy, t: float) -> None:
        self._release(c)
        req: Req = c.req  # type: ignore[assignment]
        if req.failed or req.done_at >= 0:
            return
        live = [o for o in req.copies if not o.failed and not o.cancelled]
        if live:
            return  # another copy (a hedge) still runs
        if req.first_at >= 0 or req.retries >= self.cfg.routing.retries:
            self._fail(req)  # a broken stream cannot be retried; or out of retries
            return
        req.retries += 1
        self.retries += 1
        self._route(req, t)

    # -- signals -----------------------------------------------------------------------------------------------------
    def _on_publish(self, node: Node, t: float) -> None:
        node.pub_pending = False
        node.last_pub = t
        local = node.subs_local
        remote = node.subs_remote
        if not local and not remote:
            return
        rng = self.rngs["network"]
        sig = self.cfg.signals
        # what the runtime reports now; each router builds its own view from it on delivery
        state = (node.version, node.waiting_n, node.running, node.kv_used, node.ewma_lat, node.ewma_ttft, node.alive)
        if local:
            w = sig.intra_cell_ms
            self._at(t + rng.uniform(w.min, w.max) / 1000.0, DELIVER, (local, node, state))
        if remote:  # one gossip delay per publication for the other cells (a broadcast), not one per router
            w = sig.inter_cell_ms
            self._at(t + rng.uniform(w.min, w.max) / 1000.0, DELIVER, (remote, node, state))

    def _on_deliver(self, routers: tuple[Router, ...], node: Node, state: tuple[Any, ...]) -> None:
        version = state[0]
        idx = node.idx
        learn = self.hold and not self.report_conc
        view = self._view
        for router in routers:
            seen = router.seen
            if seen.get(idx, -1) >= version:
                continue  # an older publication overtaken by a newer one
            seen[idx] = version
            router.host.upsert(view(node, state))
            if learn and state[1] >= 1 and state[2] >= 1:
                self._learn_slots(router, idx, state[2])

    def _learn_slots(self, router: Router, idx: int, running: int) -> None:
        """As the router does for a runtime that does not say its batch slots: one seen queueing while it runs N
        sequences has N slots (the largest N seen)."""
        old = router.slots.get(idx)
        if old is not None and old >= running:
            return
        if idx not in router.inflight:
            return
        n = router.inflight[idx]
        if old is None:
            router.unknown -= 1
        else:
            router.free -= max(0, old - n)
        router.slots[idx] = running
        router.free += max(0, running - n)

    # -- faults ------------------------------------------------------------------------------------------------------
    def _schedule_faults(self) -> None:
        rng = self.rngs["faults"]
        for f in self.cfg.faults:
            pool = [
                n.idx
                for n in self.nodes
                if (f.cell is None or n.cell == f.cell) and (not f.gpu or n.cls.gpu_type == f.gpu)
            ]
            k = min(len(pool), f.count or max(1, round(f.fraction * len(pool))))
            chosen = sorted(rng.sample(pool, k))
            self._at(f.at_s, FAULT, ("start", f, chosen))
            self._at(f.at_s + f.duration_s, FAULT, ("end", f, chosen))

    def _on_fault(self, item: tuple[str, Any, list[int]], t: float) -> None:
        phase, f, chosen = item
        detect = self.cfg.signals.failure_detect_ms / 1000.0
        for i in chosen:
            node = self.nodes[i]
            if f.kind == "throttle":
                node.advance(t)
                node.speed = f.factor if phase == "start" else 1.0
                self._reschedule(node)
            elif phase == "start" and node.alive:
                for c in node.fail(t):
                    self._at(t + c.owd, FAIL_NOTICE, c)
                node.gen += 1
                node.version += 1
                # the mesh marks it unroutable only once gossip has detected the failure
                self._at(t + detect, PUBLISH, node)
                node.pub_pending = True
            elif phase == "end" and not node.alive:
                node.alive = True
                node.last_t = t
                node.stall_until = t
                self._changed(node)


def _apportion(shares: list[float], n: int) -> list[int]:
    """Whole node counts per share summing to n (largest remainder)."""
    raw = [s * n for s in shares]
    counts = [int(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def resolve_base(g: Any) -> Any:
    from agents.emulator.profiles import get_profile

    return get_profile(g.type)
