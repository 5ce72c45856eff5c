"""ctl verbs for operating strategies: `strategies` (what a router holds, and each challenger's win rate against the
live strategy, per model) and `snapshot` (record an agent's targets for `infermesh strategy test --snapshot`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from agents.ctl.common import UsageError, add_common, channel, print_json, print_table, to_dict
from agents.proto.infermesh.v1 import state_pb2, state_pb2_grpc

ROUTER_ENV = "INFERMESH_ROUTER_URL"
ROUTER_TOKEN_ENV = "INFERMESH_ROUTER_TOKEN"
DEFAULT_ROUTER = "http://127.0.0.1:8080"
SNAPSHOT_FORMAT = "infermesh-targets"
SNAPSHOT_VERSION = 1


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{v * 100:.1f}%"


def fetch_strategies(router: str, model: str = "", token: str = "", timeout: float = 5.0) -> dict[str, Any]:
    url = router.rstrip("/") + "/infermesh/strategies"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.get(url, params={"model": model} if model else None, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise RouterError(f"router {router} unreachable: {exc.__class__.__name__}: {exc}") from exc
    if resp.status_code != 200:
        raise RouterError(f"router {router} answered HTTP {resp.status_code}: {resp.text[:200]}")
    try:
        doc: dict[str, Any] = resp.json()
    except ValueError as exc:
        raise RouterError(f"router {router} answered something that is not JSON") from exc
    return doc


class RouterError(Exception):
    """The router could not be asked (exit 1)."""


def cmd_strategies(args: argparse.Namespace) -> int:
    token = args.router_token or os.environ.get(ROUTER_TOKEN_ENV, "")
    try:
        doc = fetch_strategies(args.router, args.model, token, args.timeout)
    except RouterError as exc:
        print(f"ctl: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(doc)
        return 0
    rows = [
        [
            s["name"],
            s["kind"],
            "yes" if s["loaded"] else f"no: {s['error']}",
            s["decisions"],
            " ".join(f"{k}={v}" for k, v in sorted(s["fallbacks"].items())) or None,
            s["decision_us_p50"],
            s["decision_us_p99"],
        ]
        for s in doc.get("strategies", [])
    ]
    print_table(["strategy", "kind", "loaded", "decisions", "fallbacks", "p50_us", "p99_us"], rows)
    crows = []
    for m in doc.get("models", []):
        for c in m.get("challengers", []):
            rates = c.get("win_rates", {})
            crows.append(
                [
                    m["model"],
                    c["strategy"],
                    c["mode"],
                    c["live"],
                    c["compared"],
                    _pct(rates.get("overall")),
                    _pct(rates.get("ttft")),
                    _pct(rates.get("latency")),
                    _pct(rates.get("errors")),
                    _pct(c.get("agree_rate")),
                ]
            )
    print()
    if not crows:
        print("no challenger (A/B arm or shadow) has outcomes yet")
        return 0
    print_table(
        ["model", "challenger", "mode", "live", "compared", "win", "ttft", "latency", "errors", "agree"],
        crows,
        wide=["latency", "errors"],
    )
    return 0


def snapshot_doc(targets: list[state_pb2.TargetState], source: str) -> dict[str, Any]:
    return {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "source": source,
        "recorded_at": time.time(),
        "targets": [to_dict(t) for t in targets],
    }


def cmd_snapshot(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; name a file")
    with channel(args) as ch:
        resp = state_pb2_grpc.StatePlaneStub(ch).ListTargets(
            state_pb2.ListTargetsRequest(model=args.model), timeout=args.timeout
        )
    if not resp.targets:
        what = f" of model {args.model!r}" if args.model else ""
        print(f"ctl: the agent at {args.agent} knows no target{what}", file=sys.stderr)
        return 3
    doc = snapshot_doc(list(resp.targets), args.agent)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    tmp.replace(out)
    models = sorted({t.model for t in resp.targets})
    if args.json:
        print_json({"path": str(out), "targets": len(resp.targets), "models": models})
    else:
        print(f"{len(resp.targets)} targets of {len(models)} model(s) ({', '.join(models)}) written to {out}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_common(
        sub.add_parser("strategies", help="a router's strategies, and each A/B arm's and shadow's win rate per model")
    )
    p.add_argument(
        "--router",
        default=os.environ.get(ROUTER_ENV) or DEFAULT_ROUTER,
        metavar="URL",
        help=f"router to ask (default: ${ROUTER_ENV}, else {DEFAULT_ROUTER})",
    )
    p.add_argument(
        "--router-token",
        default="",
        metavar="TOKEN",
        help=f"the router's metrics bearer token, if it has one (env {ROUTER_TOKEN_ENV})",
    )
    p.add_argument("--model", default="", help="only this model")
    p.set_defaults(func=cmd_strategies)
    p = add_common(sub.add_parser("snapshot", help="record the agent's targets for `infermesh strategy test`"))
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the snapshot (JSON)")
    p.add_argument("--model", default="", help="only this model's targets (default: all)")
    p.set_defaults(func=cmd_snapshot)
