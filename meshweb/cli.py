"""`infermesh`: one command line for every process of the mesh.

Each subcommand lives with the package that owns it and is imported only when called, so that starting an
agent never loads Django and starting the portal never loads gRPC.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# subcommand -> ("module:function", one-line help). The function takes argv and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "portal": ("meshweb.commands:portal_main", "serve the portal (HTTP + WebSocket, ASGI)"),
    "token": ("meshweb.commands:token_main", "create API tokens for a tenant"),
    "manage": ("meshweb.commands:manage_main", "run a Django management command"),
    "agent": ("agents.meshd.main:agent_main", "run meshd, the node agent (gRPC state plane, scoring, control)"),
    "ctl": ("agents.ctl:main", "query and steer a node agent (nodes, gpus, targets, score, ...)"),
    "router": ("router.main:main", "run the inference router (OpenAI, KServe v2 HTTP/gRPC, WebSocket)"),
    "strategy": ("agents.strategies.cli:main", "test a routing strategy offline against a target snapshot"),
    "sim": ("agents.sim.cli:main", "simulate the mesh at scale with the router's strategies (--config FILE)"),
    "emulate-runtime": ("agents.emulator.server:main", "serve an emulated LLM runtime (OpenAI API, runtime /metrics)"),
    "ca": ("agents.security.cli:ca_main", "the mesh certificate authority: init, issue, revoke, crl (offline root)"),
    "join": ("agents.security.cli:join_main", "enroll this node in the mesh CA with a one-time join token"),
    "demo": ("meshweb.demo:demo_main", "run the whole mesh on this machine (portal, Celery, agents, router, runtimes)"),
    "worker": ("meshweb.celery:worker_main", "run a Celery worker of the portal (quarantine checks, housekeeping)"),
    "beat": ("meshweb.celery:beat_main", "run the one Celery beat (the static schedule in settings)"),
    "node": ("meshweb.meshlink.commands:node_main", "enroll nodes: print the credential their agent presents"),
}


EXAMPLES = [
    "infermesh demo                                    # the whole mesh on this machine",
    "infermesh agent --config agent.yaml",
    "infermesh router --config router.yaml --port 8080",
    "INFERMESH_AGENT=127.0.0.1:7070 infermesh ctl nodes -o wide",
    "infermesh help ctl                                # the help of one command",
    "source <(infermesh completion bash)               # tab completion in this shell",
]
# Verbs of this module, besides the commands above.
BUILTINS = {
    "help": "show the help of a command: infermesh help COMMAND [VERB]",
    "version": "print the version, the build's git revision and the mesh API version",
    "completion": "print a shell completion script: infermesh completion bash|zsh|fish",
}
ROOT = Path(__file__).resolve().parent.parent


def _usage() -> str:
    names = {**{n: h for n, (_, h) in COMMANDS.items()}, **BUILTINS}
    width = max(len(name) for name in names)
    lines = ["usage: infermesh COMMAND [ARGS...]", "       infermesh --version", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, help_ in sorted(names.items())]
    lines += ["", "examples:", *(f"  {e}" for e in EXAMPLES)]
    return "\n".join(lines)


def resolve(name: str) -> Callable[[Sequence[str]], int]:
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    func: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module_name), func_name)
    return func


def git_revision() -> str:
    """The build's git revision: the checkout's HEAD (an editable install), else the one recorded at build time."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def version_line() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from agents.proto.infermesh.v1 import control_pb2

    try:
        release = version("infermesh")
    except PackageNotFoundError:
        release = "unknown"
    return f"infermesh {release} (git {git_revision()}), mesh API {control_pb2.DESCRIPTOR.package}"


def did_you_mean(word: str) -> str:
    from agents.argparsing import suggest

    close = suggest(word, [*COMMANDS, *BUILTINS])
    return f"; did you mean {close!r}?" if close else ""


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """The argparse parser of every command (for completions and the help check); `manage` is Django's."""
    from agents.argparsing import capture_parser

    parsers = {}
    for name in COMMANDS:
        if name == "manage":
            continue
        parser = capture_parser(resolve(name))
        if parser is not None:
            parsers[name] = parser
    return parsers


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if args[0] in {"--version", "-V", "version"}:
        print(version_line())
        return 0
    if args[0] == "help":
        if len(args) == 1:
            print(_usage())
            return 0
        return main([*args[1:], "--help"])
    if args[0] == "completion":
        from meshweb.completion import completion_main

        return completion_main(args[1:])
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"infermesh: unknown command {name!r}{did_you_mean(name)}\n\n{_usage()}", file=sys.stderr)
        return 2
    return resolve(name)(rest)


if __name__ == "__main__":
    sys.exit(main())
