"""`infermesh ctl members` (gossip membership with state, incarnation and coordinate) and `ctl rtt` (topology)."""

from __future__ import annotations

import argparse

from agents.ctl.common import add_common, channel, print_json, print_table, to_dict
from agents.proto.infermesh.v1 import membership_pb2, membership_pb2_grpc


def _status(value: int) -> str:
    return membership_pb2.MemberStatus.Name(value).removeprefix("MEMBER_STATUS_").lower()  # type: ignore[arg-type]


def cmd_members(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        resp = membership_pb2_grpc.MembershipStub(ch).ListMembers(
            membership_pb2.ListMembersRequest(), timeout=args.timeout
        )
    if args.json:
        doc = to_dict(resp)
        for m, pm in zip(doc["members"], resp.members, strict=True):
            m["state"] = _status(pm.status)
            if not pm.HasField("coordinate"):
                m["coordinate"] = None
        print_json(doc)
        return 0
    rows = []
    for m in resp.members:
        coord = f"err={m.coordinate.error:.2f}" if m.HasField("coordinate") else None
        rtt = f"{m.rtt_estimate_s * 1000:.2f}ms" if not m.local else None
        measured = f"{m.measured_rtt_s * 1000:.2f}ms" if m.HasField("measured_rtt_s") else None
        loss = f"{m.loss:.0%}" if m.HasField("loss") else None
        name = m.name + (" *" if m.local else "")
        rows.append([name, _status(m.status), m.incarnation, m.gossip_address, list(m.roles), m.zone, m.link_class,
                     rtt, measured, loss, coord])  # fmt: skip
    print_table(
        ["member", "state", "inc", "gossip", "roles", "zone", "link", "rtt", "probe_rtt", "loss", "coordinate"],
        rows,
        wide=["inc", "gossip", "probe_rtt", "coordinate"],
    )
    mode = "DEGRADED (local-only)" if resp.degraded else "ok"
    print(f"\n{resp.reachable}/{resp.total} reachable, mesh {mode}, health score {resp.health_score}")
    return 0


def cmd_rtt(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        resp = membership_pb2_grpc.TopologyStub(ch).EstimateRtt(
            membership_pb2.EstimateRttRequest(src=args.src, dst=args.dst), timeout=args.timeout
        )
    if args.json:
        print_json(to_dict(resp))
        return 0
    source = "coordinates" if resp.from_coordinates else "link-class default"
    print(f"{resp.rtt_s * 1000:.3f} ms ({resp.link_class}, from {source})")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_common(sub.add_parser("members", help="list gossip members with state, incarnation and coordinate"))
    p.set_defaults(func=cmd_members)
    p = add_common(sub.add_parser("rtt", help="estimated RTT between two members (Vivaldi)"))
    p.add_argument("dst", help="destination member")
    p.add_argument("--src", default="", help="source member (default: the agent's node)")
    p.set_defaults(func=cmd_rtt)
