"""Core ctl verbs: nodes, gpus, targets, models, score, cordon / uncordon / drain, events."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

import grpc

from agents.ctl.common import OUTPUT, add_common, channel, print_item, print_json, print_table, to_dict
from agents.proto.infermesh.v1 import (
    control_pb2,
    control_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
    state_pb2,
    state_pb2_grpc,
)

_HEALTH = {0: "unknown", 1: "healthy", 2: "unhealthy"}


def _opt(msg: Any, name: str) -> float | None:
    return float(getattr(msg, name)) if msg.HasField(name) else None


def _state(value: int) -> str:
    return control_pb2.NodeState.Name(value).removeprefix("NODE_STATE_").lower()  # type: ignore[arg-type]


def cmd_nodes(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        resp = control_pb2_grpc.ControlStub(ch).ListNodes(control_pb2.ListNodesRequest(), timeout=args.timeout)
    if args.json:
        print_json([to_dict(n) for n in resp.nodes])
        return 0
    rows = []
    for n in resp.nodes:
        name = n.node_id + (" *" if n.local else "")
        rows.append([name, _state(n.state), list(n.roles), n.zone, n.gpus, n.targets, n.grpc_address])
    print_table(["node", "state", "roles", "zone", "gpus", "targets", "address"], rows, wide=["address"])
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        resp = state_pb2_grpc.StatePlaneStub(ch).ListGpus(state_pb2.ListGpusRequest(), timeout=args.timeout)
    if args.json:
        print_json([to_dict(g) for g in resp.gpus])
        return 0
    rows = []
    for fg in resp.gpus:
        g = fg.gpu
        mem = None
        if g.HasField("memory_used_bytes") and g.HasField("memory_total_bytes"):
            mem = f"{g.memory_used_bytes / 2**30:.1f}/{g.memory_total_bytes / 2**30:.0f}GiB"
        rows.append(
            [
                g.index,
                g.uuid,
                g.name,
                g.mig_profile,
                _opt(g, "utilization_gpu"),
                mem,
                _opt(g, "temperature_c"),
                _opt(g, "power_w"),
                _opt(g, "sm_clock_mhz"),
                ",".join(r for r in g.throttle_reasons if r != "gpu_idle"),
                "ok" if fg.healthy else f"FAIL: {fg.health_reason}",
                fg.freshness,
            ]
        )
    print_table(
        ["idx", "uuid", "name", "mig", "util%", "memory", "temp_c", "power_w", "sm_mhz", "throttle", "health", "fresh"],
        rows,
        wide=["uuid", "mig", "sm_mhz", "throttle"],
    )
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        resp = state_pb2_grpc.StatePlaneStub(ch).ListTargets(
            state_pb2.ListTargetsRequest(model=args.model, routable_only=args.routable), timeout=args.timeout
        )
    if args.json:
        print_json([to_dict(t) for t in resp.targets])
        return 0
    rows = [
        [
            t.target_id,
            t.runtime,
            _HEALTH[int(t.health)],
            t.routable,
            _opt(t, "requests_waiting"),
            _opt(t, "requests_running"),
            _opt(t, "kv_cache_usage"),
            _opt(t, "ttft_p95_s"),
            t.work_left_s,
            t.freshness,
            t.health_reason,
        ]
        for t in resp.targets
    ]
    print_table(
        ["target", "runtime", "health", "routable", "waiting", "running", "kv", "ttft_p95", "work_s", "fresh", "why"],
        rows,
        wide=["runtime", "ttft_p95", "work_s"],
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        resp = control_pb2_grpc.ControlStub(ch).ListModels(control_pb2.ListModelsRequest(), timeout=args.timeout)
    if args.json:
        print_json([to_dict(m) for m in resp.models])
        return 0
    rows = [[m.model, list(m.revisions), m.targets, m.routable_targets, list(m.runtimes)] for m in resp.models]
    print_table(["model", "revisions", "targets", "routable", "runtimes"], rows)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    request = scoring_pb2.ScoreRequest(
        model=args.model,
        revision=args.revision,
        tenant=args.tenant,
        prompt_tokens=args.prompt_tokens,
        max_tokens=args.max_tokens,
        strategy=args.strategy,
        top_k=args.top_k,
        client_node=args.client_node,
        mig_profile=args.mig_profile,
    )
    with channel(args) as ch:
        resp = scoring_pb2_grpc.ScoringStub(ch).ScoreTargets(request, timeout=args.timeout)
    if args.json:
        print_json(to_dict(resp))
        return 0
    note = f" (fallback: {resp.fallback_reason})" if resp.fallback else ""
    print(f"strategy {resp.strategy}{note}, decided in {resp.decision_us:.1f} us")
    if not resp.ranked:
        print(f"no routable target for model {args.model!r}")
        return 3
    rows = []
    for i, s in enumerate(resp.ranked, 1):
        top = sorted(((v, k) for k, v in s.terms.items() if v), reverse=True)[:3]
        rows.append([i, s.target_id, s.score, " ".join(f"{k}={v:.3g}" for v, k in top)])
    print_table(["rank", "target", "score", "main terms"], rows)
    return 0


def _node_action(args: argparse.Namespace) -> int:
    req = control_pb2.NodeActionRequest(node_id=args.node, reason=args.reason)
    with channel(args) as ch:
        stub = control_pb2_grpc.ControlStub(ch)
        rpc = {"cordon": stub.Cordon, "uncordon": stub.Uncordon, "drain": stub.Drain}[args.verb]
        info = rpc(req, timeout=args.timeout)
    if args.json:
        print_json(to_dict(info))
    else:
        print(f"{info.node_id}: {_state(info.state)}")
    return 0


def event_time(unix_ms: int) -> str:
    """An event's time in UTC, to the millisecond (ISO 8601)."""
    stamp = datetime.fromtimestamp(unix_ms / 1000, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{unix_ms % 1000:03d}Z"


def cmd_events(args: argparse.Namespace) -> int:
    req = control_pb2.SubscribeEventsRequest(kinds=args.kind, since_seq=args.since, live_only=args.live)
    seen = 0
    with channel(args) as ch:
        stream = control_pb2_grpc.ControlStub(ch).SubscribeEvents(req, timeout=args.follow_s or None)
        try:
            for event in stream:
                when = event_time(event.unix_ms)
                if args.json:
                    print_item({**to_dict(event), "time": when})
                else:
                    sev = control_pb2.Severity.Name(event.severity).removeprefix("SEVERITY_").lower()
                    target = f" {event.target_id}" if event.target_id else ""
                    node = f" [{event.node}]" if event.node and OUTPUT["format"] == "wide" else ""
                    print(f"{when} {event.seq:>6} {sev:<7} {event.kind}{target}{node}: {event.message}")
                sys.stdout.flush()
                seen += 1
                if args.count and seen >= args.count:
                    stream.cancel()
                    break
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                raise
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_common(sub.add_parser("nodes", help="list known nodes"))
    p.set_defaults(func=cmd_nodes)
    p = add_common(sub.add_parser("gpus", help="list the node's GPUs with fused health"))
    p.set_defaults(func=cmd_gpus)
    p = add_common(sub.add_parser("targets", help="list routing targets with their fused state"))
    p.add_argument("--model", default="", help="only this model")
    p.add_argument("--routable", action="store_true", help="only targets that take new work")
    p.set_defaults(func=cmd_targets)
    p = add_common(sub.add_parser("models", help="list served models"))
    p.set_defaults(func=cmd_models)
    p = add_common(sub.add_parser("score", help="rank targets for a request (ScoreTargets)"))
    p.add_argument("--model", required=True, help="model to rank targets for")
    p.add_argument("--revision", default="", help="model revision (default: any)")
    p.add_argument("--tenant", default="", help="tenant the request is for (default: none)")
    p.add_argument("--prompt-tokens", type=int, default=0, help="prompt length in tokens")
    p.add_argument("--max-tokens", type=int, default=0, help="output tokens asked for")
    p.add_argument("--strategy", default="", help="baseline_rr | least_queue | hybrid_mesh | a plugin name")
    p.add_argument("--top-k", type=int, default=0, help="targets to return (0: the agent's scoring.top_k)")
    p.add_argument("--client-node", default="", help="node the request comes from (network term; default: none)")
    p.add_argument("--mig-profile", default="", help="only targets on this MIG profile (default: any)")
    p.set_defaults(func=cmd_score)
    for verb, help_ in (
        ("cordon", "stop new work on the node"),
        ("uncordon", "let the node take work again"),
        ("drain", "stop new work and let the node finish what it has"),
    ):
        p = add_common(sub.add_parser(verb, help=help_))
        p.add_argument("--node", default="", help="node id (default: the agent's own)")
        p.add_argument("--reason", default="", help="why, for the event log (default: none)")
        p.set_defaults(func=_node_action)
    p = add_common(sub.add_parser("events", help="stream the agent's events (SubscribeEvents)"))
    p.add_argument("--kind", action="append", default=[], help="event kind prefix, repeatable (e.g. target.)")
    p.add_argument("--since", type=int, default=0, help="replay buffered events after this sequence number")
    p.add_argument("--live", action="store_true", help="no replay: only events from now on")
    p.add_argument("--count", type=int, default=0, help="stop after this many events")
    p.add_argument("--follow-s", type=float, default=0.0, help="stop after this many seconds (default: never)")
    p.set_defaults(func=cmd_events)
