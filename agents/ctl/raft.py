"""ctl verbs for the Raft group an agent hosts: `raft status|transfer|snapshot|add|remove`."""

from __future__ import annotations

import argparse

from agents.ctl.common import add_common, channel, print_json, print_table, to_dict
from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc


def _print_status(args: argparse.Namespace, st: store_pb2.RaftStatusResponse) -> int:
    if args.json:
        print_json(to_dict(st))
        return 0
    print(f"group {st.group}  node {st.node_id}  role {st.role}  leader {st.leader or '-'}  term {st.term}")
    print(f"commit {st.commit}  applied {st.applied}  last index {st.last_index}  snapshot {st.snapshot_index}")
    rows = []
    progress = {p.id: p for p in st.progress}
    for n in sorted(set(st.voters) | set(st.learners)):
        p = progress.get(n)
        rows.append(
            [
                n,
                "voter" if n in st.voters else "learner",
                st.addresses.get(n, "-"),
                "leader" if n == st.leader else "",
                p.match if p else None,
                p.state if p else None,
            ]
        )
    print_table(["id", "kind", "address", "", "match", "state"], rows)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        st = store_pb2_grpc.RaftAdminStub(ch).Status(
            store_pb2.RaftStatusRequest(group=args.group), timeout=args.timeout
        )
    return _print_status(args, st)


def cmd_transfer(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        req = store_pb2.RaftTransferRequest(group=args.group, target=args.node)
        st = store_pb2_grpc.RaftAdminStub(ch).TransferLeader(req, timeout=args.timeout)
    return _print_status(args, st)


def cmd_snapshot(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        resp = store_pb2_grpc.RaftAdminStub(ch).Snapshot(
            store_pb2.RaftSnapshotRequest(group=args.group), timeout=args.timeout
        )
    if args.json:
        print_json(to_dict(resp))
    else:
        print(f"snapshot at index {resp.index} (term {resp.term}), {resp.size} bytes")
    return 0


def cmd_member(args: argparse.Namespace) -> int:
    op = {"add": "add_learner" if args.learner else "add_voter", "remove": "remove"}[args.raft_verb]
    with channel(args) as ch:
        req = store_pb2.RaftMembershipRequest(
            group=args.group, op=op, node_id=args.node, address=getattr(args, "address", "")
        )
        st = store_pb2_grpc.RaftAdminStub(ch).ChangeMembership(req, timeout=args.timeout)
    return _print_status(args, st)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    raft = sub.add_parser("raft", help="inspect and steer the agent's Raft group")
    verbs = raft.add_subparsers(dest="raft_verb", metavar="VERB", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_common(p)
        p.add_argument("--group", default="", help="raft group id (default: default)")
        return p

    common(verbs.add_parser("status", help="role, leader, term, commit index, members")).set_defaults(func=cmd_status)
    p = common(verbs.add_parser("transfer", help="move leadership to NODE"))
    p.add_argument("node", type=int, help="raft node id of the new leader")
    p.set_defaults(func=cmd_transfer)
    common(verbs.add_parser("snapshot", help="snapshot the state machine and compact the log now")).set_defaults(
        func=cmd_snapshot
    )
    p = common(verbs.add_parser("add", help="add a member (send to the leader)"))
    p.add_argument("node", type=int, help="raft node id of the new member")
    p.add_argument("address", help="HOST:PORT of the new member's agent")
    p.add_argument("--learner", action="store_true", help="add as a non-voting learner")
    p.set_defaults(func=cmd_member)
    p = common(verbs.add_parser("remove", help="remove a member (send to the leader)"))
    p.add_argument("node", type=int, help="raft node id of the member")
    p.set_defaults(func=cmd_member)
