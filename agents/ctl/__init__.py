"""`infermesh ctl`: verbs that query and steer a node agent over gRPC.

Verbs are registered by modules listed in `VERB_MODULES`; each exposes `register(subparsers)` and adds its parsers
with `common.add_common` (so every verb takes `--agent HOST:PORT`, `--json` and the mTLS flags `--ca --cert --key
[--server-name] [--token]`) and `set_defaults(func=...)`. Exit codes: 0 done, 1 the agent refused or failed the call,
2 bad flags or unreadable certificate files, 3 nothing to show (e.g. no routable target).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import grpc

from agents.argparsing import Parser, examples
from agents.ctl.common import VALUE_FLAGS, UsageError, set_output, tls_given

# Add one line per module that contributes verbs (gossip: members; raft: store, raft).
VERB_MODULES: list[str] = [
    "agents.ctl.core",
    "agents.ctl.members",
    "agents.ctl.store",
    "agents.ctl.raft",
    "agents.ctl.strategies",
]


# The agent component that serves a verb, for "not enabled on this agent" instead of UNIMPLEMENTED.
COMPONENT_OF = {"members": "gossip", "rtt": "gossip", "store": "raft", "raft": "raft"}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="infermesh ctl",
        description=__doc__.splitlines()[0] + "\nThe agent: --agent, else INFERMESH_AGENT, else 127.0.0.1:7070.",
        epilog=examples(
            "export INFERMESH_AGENT=127.0.0.1:7070       # then no --agent on each call",
            "infermesh ctl nodes -o wide",
            "infermesh ctl targets --model demo-llm --routable -o json",
            "infermesh ctl score --model demo-llm --prompt-tokens 512",
            "infermesh ctl events --kind target. -o json    # one JSON object per line",
            "infermesh ctl store get policies/ --prefix",
            "infermesh ctl strategies --router http://127.0.0.1:8080 --json",
            "infermesh ctl snapshot --out targets.json   # then: infermesh strategy test S --snapshot targets.json",
        ),
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _hoist_common(argv: list[str]) -> list[str]:
    """`ctl --agent H:P store get k` means `ctl store get k --agent H:P`: common flags may precede the verb (they
    move to the end, where the innermost verb's parser reads them)."""
    front: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("--help", "-h"):
        flag = argv[i]
        takes_value = flag in VALUE_FLAGS
        front += argv[i : i + (2 if takes_value else 1)]
        i += 2 if takes_value else 1
    if not front or i >= len(argv):
        return argv
    return [*argv[i:], *front]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_hoist_common(list(sys.argv[1:] if argv is None else argv)))
    set_output(args)
    try:
        rc: int = args.func(args)
    except BrokenPipeError:  # the reader (e.g. `head`) left; nothing more to say
        sys.stderr.close()
        return 0
    except UsageError as exc:
        print(f"ctl: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = "" if tls_given(args) else " (if the agent has a `tls:` section, give --ca, --cert and --key)"
            print(f"ctl: cannot reach the agent at {args.agent}: {details}{hint}", file=sys.stderr)
        elif code == grpc.StatusCode.UNIMPLEMENTED:
            component = COMPONENT_OF.get(args.verb, "the component")
            print(f"ctl: {args.verb}: {component} not enabled on the agent at {args.agent}", file=sys.stderr)
        else:
            name = code.name if code is not None else "ERROR"
            print(f"ctl: {args.verb}: {name}: {details}", file=sys.stderr)
        return 1
    return rc
