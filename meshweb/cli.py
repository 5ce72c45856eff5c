"""`infermesh`: one command line for every process of the mesh.

Each subcommand lives with the package that owns it and is imported only when called, so that starting an
agent never loads Django and starting the portal never loads gRPC.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# subcommand -> ("module:function", one-line help). The function takes argv and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "portal": ("meshweb.commands:portal_main", "serve the portal (HTTP + WebSocket, ASGI)"),
    "token": ("meshweb.commands:token_main", "create API tokens for a tenant"),
    "manage": ("meshweb.commands:manage_main", "run a Django management command"),
    "agent": ("agents.meshd.main:agent_main", "run meshd, the node agent (gRPC state plane, scoring, control)"),
    "ctl": ("agents.ctl:main", "query and steer a node agent (nodes, gpus, targets, score, ...)"),
    "router": ("router.main:main", "run the inference router (OpenAI, KServe v2 HTTP/gRPC, WebSocket)"),
    "sim": ("agents.sim.cli:main", "simulate the mesh at scale with the router's strategies (--config FILE)"),
    "emulate-runtime": ("agents.emulator.server:main", "serve an emulated LLM runtime (OpenAI API, runtime /metrics)"),
    "ca": ("agents.security.cli:ca_main", "the mesh certificate authority: init, issue, revoke, crl (offline root)"),
    "join": ("agents.security.cli:join_main", "enroll this node in the mesh CA with a one-time join token"),
    "demo": ("meshweb.demo:demo_main", "run the whole mesh on this machine (portal, Celery, agents, router, runtimes)"),
    "worker": ("meshweb.celery:worker_main", "run a Celery worker of the portal (quarantine checks, housekeeping)"),
    "beat": ("meshweb.celery:beat_main", "run the one Celery beat (the static schedule in settings)"),
    "node": ("meshweb.meshlink.commands:node_main", "enroll nodes: print the credential their agent presents"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: infermesh COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in sorted(COMMANDS.items())]
    return "\n".join(lines)


def resolve(name: str) -> Callable[[Sequence[str]], int]:
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    func: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module_name), func_name)
    return func


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"infermesh: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return resolve(name)(rest)


if __name__ == "__main__":
    sys.exit(main())
