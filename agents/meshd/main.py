"""`infermesh agent --config FILE`: start meshd."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from agents.argparsing import Parser, examples
from agents.binding import BindError, fail, probe_reason, split_host_port
from agents.configload import resolved
from agents.meshd.adapters import AdapterUnavailableError
from agents.meshd.component import ComponentConfigError
from agents.meshd.config import ConfigError, load_config_with_origin


def agent_main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="infermesh agent",
        epilog=examples(
            "infermesh agent --config docs/examples/agent.yaml",
            "MESHD__LISTEN__GRPC=0.0.0.0:7070 infermesh agent --config agent.yaml",
            "infermesh agent --config agent.yaml --check    # validate and exit",
        ),
        description="Run meshd, the node agent. Environment overrides: MESHD__SECTION__FIELD=value "
        "(e.g. MESHD__LISTEN__GRPC=0.0.0.0:7070).",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults)")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (values from the environment marked)"
    )
    args = parser.parse_args(list(argv))
    try:
        config, origin = load_config_with_origin(args.config)
    except ConfigError as exc:
        print(f"meshd: config error: {exc}".replace("\n", "\nmeshd: config error: "), file=sys.stderr)
        return 2
    if args.print_config:
        print(resolved(config, origin, args.config or "defaults"), end="")
        return 0
    from agents.meshd.agent import Agent
    from agents.meshd.logs import setup_logging

    try:
        agent = Agent(config, origin)
    except (ComponentConfigError, ValueError) as exc:
        print(f"meshd: config error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"meshd: config OK (node {config.node.id}, roles {','.join(config.node.roles)})")
        return 0
    # A taken port is found before anything starts or logs: one line, exit 2.
    from agents.meshd.agent import GRPC_CHANGE, HTTP_CHANGE

    for address, change in ((config.listen.grpc, GRPC_CHANGE), (config.listen.http, HTTP_CHANGE)):
        host, port = split_host_port(address)
        reason = probe_reason(host, port)
        if reason is not None:
            return fail("meshd", BindError(address, reason, change))
    setup_logging(config.logging.level, config.logging.json_format, config.node.id)
    from agents.tracing import setup_from_env

    try:
        setup_from_env("infermesh-agent", instance=config.node.id)  # OTEL_EXPORTER_OTLP_* (off when unset)
    except ValueError as exc:
        print(f"meshd: tracing: {exc}", file=sys.stderr)
        return 2
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(agent.run())
    except AdapterUnavailableError as exc:
        print(f"meshd: config error: {exc}", file=sys.stderr)
        return 2
    except BindError as exc:
        return fail("meshd", exc)
    except OSError as exc:
        print(f"meshd: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
