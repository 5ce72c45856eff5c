"""ctl verbs for the Raft policy store: `store get|put|cas|delete|watch`."""

from __future__ import annotations

import argparse
import sys

from agents.ctl.common import add_common, channel, print_item, print_json, print_table, to_dict
from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc


def cmd_get(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        req = store_pb2.StoreGetRequest(
            group=args.group, key=args.key, prefix=args.prefix, serializable=args.serializable
        )
        resp = store_pb2_grpc.StoreStub(ch).Get(req, timeout=args.timeout)
    if args.json:
        print_json(to_dict(resp))
        return 0 if resp.kvs or args.prefix else 1
    if resp.stale:
        print(f"warning: possibly stale: {resp.stale_reason}", file=sys.stderr)
    if args.prefix:
        print_table(
            ["key", "value", "mod_rev", "version"], [[kv.key, kv.value, kv.mod_revision, kv.version] for kv in resp.kvs]
        )
        return 0
    if not resp.kvs:
        print(f"{args.key}: not found (revision {resp.revision})", file=sys.stderr)
        return 1
    print(resp.kvs[0].value)
    return 0


def _print_write(args: argparse.Namespace, resp: store_pb2.StoreWriteResponse) -> int:
    if args.json:
        print_json(to_dict(resp))
    elif resp.succeeded:
        print(f"OK revision {resp.revision}")
    else:
        current = resp.current_value if resp.has_current else "<absent>"
        print(f"compare failed: current value is {current}", file=sys.stderr)
    return 0 if resp.succeeded else 1


def cmd_put(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        req = store_pb2.StorePutRequest(group=args.group, key=args.key, value=args.value)
        resp = store_pb2_grpc.StoreStub(ch).Put(req, timeout=args.timeout)
    return _print_write(args, resp)


def cmd_cas(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        req = store_pb2.StoreCasRequest(
            group=args.group, key=args.key, expected=args.expected, value=args.new, expect_absent=args.absent
        )
        resp = store_pb2_grpc.StoreStub(ch).Cas(req, timeout=args.timeout)
    return _print_write(args, resp)


def cmd_delete(args: argparse.Namespace) -> int:
    with channel(args) as ch:
        req = store_pb2.StoreDeleteRequest(group=args.group, key=args.key)
        resp = store_pb2_grpc.StoreStub(ch).Delete(req, timeout=args.timeout)
    return _print_write(args, resp)


def cmd_watch(args: argparse.Namespace) -> int:
    seen = 0
    with channel(args) as ch:
        req = store_pb2.StoreWatchRequest(group=args.group, prefix=args.prefix, start_revision=args.rev)
        for ev in store_pb2_grpc.StoreStub(ch).Watch(req):
            if args.json:
                print_item(to_dict(ev))
            else:
                print(f"{ev.revision} {ev.type} {ev.key} {ev.value}", flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store = sub.add_parser("store", help="read and write the Raft policy store")
    verbs = store.add_subparsers(dest="store_verb", metavar="VERB", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_common(p)
        p.add_argument("--group", default="", help="raft group id (default: default)")
        return p

    p = common(verbs.add_parser("get", help="read a key (linearizable unless --serializable)"))
    p.add_argument("key", help="the key (with --prefix: the prefix)")
    p.add_argument("--prefix", action="store_true", help="list every key under KEY")
    p.add_argument("--serializable", action="store_true", help="read local state without asking the leader")
    p.set_defaults(func=cmd_get)
    p = common(verbs.add_parser("put", help="write a key"))
    p.add_argument("key", help="the key")
    p.add_argument("value", help="the value (JSON for the policy families)")
    p.set_defaults(func=cmd_put)
    p = common(verbs.add_parser("cas", help="compare-and-set: write NEW only if the value is EXPECTED"))
    p.add_argument("key", help="the key")
    p.add_argument("expected", help="the value it must have now")
    p.add_argument("new", help="the value to write")
    p.add_argument("--absent", action="store_true", help="expect the key not to exist (EXPECTED is ignored)")
    p.set_defaults(func=cmd_cas)
    p = common(verbs.add_parser("delete", help="delete a key"))
    p.add_argument("key", help="the key")
    p.set_defaults(func=cmd_delete)
    p = common(verbs.add_parser("watch", help="stream changes under a prefix"))
    p.add_argument("prefix", nargs="?", default="", help="only keys under this prefix (default: all)")
    p.add_argument("--rev", type=int, default=0, help="start from this revision (default: next change)")
    p.add_argument("--count", type=int, default=0, help="stop after this many events")
    p.set_defaults(func=cmd_watch)
