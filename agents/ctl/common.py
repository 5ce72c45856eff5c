"""Shared pieces of ctl verbs: the common flags, the channel to the agent (mTLS with the operator's certificate,
bearer JWT on admin calls), and table / JSON output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from agents.security.authz import ADMIN_METHODS
from agents.security.ca import CaError, load_certificate
from agents.security.tls import ClientIdentity, dial_sync

DEFAULT_AGENT = "127.0.0.1:7070"
# flag -> environment variable that gives its default
TLS_ENV = {"ca": "INFERMESH_TLS_CA", "cert": "INFERMESH_TLS_CERT", "key": "INFERMESH_TLS_KEY"}
TOKEN_ENV = "INFERMESH_TOKEN"
AGENT_ENV = "INFERMESH_AGENT"
VALUE_FLAGS = ("--agent", "--timeout", "--ca", "--cert", "--key", "--server-name", "--token", "-o", "--output")
OUTPUTS = ("table", "wide", "json", "yaml")
# The output format of this invocation (set by main from -o/--json): print_json and print_table follow it.
OUTPUT = {"format": "table", "headers": True}


class UsageError(Exception):
    """Bad flags or unusable files: ctl prints the message and exits 2."""


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--agent",
        default=os.environ.get(AGENT_ENV) or DEFAULT_AGENT,
        metavar="HOST:PORT",
        help=f"agent to ask (default: ${AGENT_ENV}, else {DEFAULT_AGENT})",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default="table",
        help="table, wide (every column), json or yaml; streams print one JSON object per line",
    )
    parser.add_argument("--json", action="store_true", help="the same as -o json")
    parser.add_argument("--no-headers", action="store_true", help="tables without their header line")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S", help="RPC deadline in seconds")
    tls = parser.add_argument_group("mTLS (agents with a `tls:` section)")
    # dest tls_*: verbs have positionals of their own named `key`
    tls.add_argument("--ca", dest="tls_ca", metavar="PEM", help=f"mesh CA certificate (env {TLS_ENV['ca']})")
    tls.add_argument(
        "--cert", dest="tls_cert", metavar="PEM", help=f"your certificate from the mesh CA (env {TLS_ENV['cert']})"
    )
    tls.add_argument("--key", dest="tls_key", metavar="PEM", help=f"its private key (env {TLS_ENV['key']})")
    tls.add_argument("--server-name", default="", metavar="NAME", help="check the agent's certificate for this name")
    tls.add_argument("--token", metavar="JWT", help=f"operator's bearer JWT for admin calls (env {TOKEN_ENV})")
    return parser


def _tls_paths(args: argparse.Namespace) -> dict[str, str]:
    return {name: getattr(args, f"tls_{name}", None) or os.environ.get(var, "") for name, var in TLS_ENV.items()}


def tls_given(args: argparse.Namespace) -> bool:
    return any(_tls_paths(args).values())


def identity(args: argparse.Namespace) -> ClientIdentity | None:
    """The operator's mTLS identity from the flags (or their environment variables); None for a plaintext agent."""
    paths = _tls_paths(args)
    given = [name for name, path in paths.items() if path]
    if not given:
        return None
    missing = [f"--{name} (or {var})" for name, var in TLS_ENV.items() if name not in given]
    if missing:
        raise UsageError(f"mTLS needs --ca, --cert and --key together; missing {', '.join(missing)}")
    for name, path in paths.items():
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise UsageError(f"--{name}: cannot read {path}: {err.strerror}") from None
        if name != "key":
            try:
                load_certificate(data)
            except CaError as err:
                raise UsageError(f"--{name}: {path}: {err}") from None
    ident = ClientIdentity(paths["ca"], paths["cert"], paths["key"], server_name=getattr(args, "server_name", ""))
    if not ident.consistent():
        raise UsageError(f"--key: {paths['key']} is not the private key of the certificate {paths['cert']}")
    return ident


class _BearerOnAdminCalls(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer` to the calls the agent reserves for operators (agents.security.authz)."""

    def __init__(self, token: str) -> None:
        self.metadata = ("authorization", f"Bearer {token}")

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        if client_call_details.method in ADMIN_METHODS:
            details = client_call_details._replace(metadata=[*(client_call_details.metadata or ()), self.metadata])
            return continuation(details, request)
        return continuation(client_call_details, request)


def channel(args: argparse.Namespace) -> grpc.Channel:
    ident = identity(args)
    ch = dial_sync(args.agent, ident)
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV, "")
    if token and ident is not None:
        return grpc.intercept_channel(ch, _BearerOnAdminCalls(token))
    if token:
        print("ctl: not sending the bearer token over a plaintext channel (no --ca/--cert/--key)", file=sys.stderr)
    return ch


def to_dict(msg: Message) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def set_output(args: argparse.Namespace) -> None:
    """Take -o / --json / --no-headers; afterwards `args.json` means "structured output" (json or yaml)."""
    fmt_ = "json" if getattr(args, "json", False) else getattr(args, "output", "table")
    OUTPUT["format"] = fmt_
    OUTPUT["headers"] = not getattr(args, "no_headers", False)
    args.json = fmt_ in ("json", "yaml")


def print_json(doc: Any) -> None:
    """A whole answer as JSON (indented) or YAML, by -o."""
    if OUTPUT["format"] == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(doc, sort_keys=True, default_flow_style=False))
        return
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def print_item(doc: Any) -> None:
    """One item of a stream: one JSON object per line (jq-friendly), or one YAML document."""
    if OUTPUT["format"] == "yaml":
        import yaml

        sys.stdout.write("---\n" + yaml.safe_dump(doc, sort_keys=True, default_flow_style=False))
    else:
        sys.stdout.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value) if value != "" else "-"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], wide: Sequence[str] = ()) -> None:
    """A table; the columns named in `wide` only with -o wide."""
    if OUTPUT["format"] != "wide" and wide:
        keep = [i for i, h in enumerate(headers) if h not in wide]
        headers = [headers[i] for i in keep]
        rows = [[row[i] for i in keep] for row in rows]
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    if OUTPUT["headers"]:
        print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
