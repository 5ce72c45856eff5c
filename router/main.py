"""`infermesh router --config FILE`: run the router on uvloop, in one process or several sharing the port."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from agents.argparsing import Parser, examples
from agents.binding import EXIT_BIND, BindError, PortLock, fail, join_host_port, probe_reason, reason_of
from agents.configload import resolved
from agents.security.tls import ClientIdentity
from router.config import ConfigError, RouterConfig, load_config, load_config_with_origin


async def serve(cfg: RouterConfig, stop: asyncio.Event | None = None) -> None:
    from router.app import build_app
    from router.grpc_server import start_grpc
    from router.obs import flush_access_log, log_event, setup_tracing
    from router.service import RouterService
    from router.upstream import UpstreamPool

    setup_tracing(cfg.tracing)
    # https:// runtimes see the router's SVID and are checked against the mesh CA; one live context, so a rotated
    # certificate reaches new connections while pooled ones stay.
    identity = ClientIdentity.of(cfg.runtime_tls())
    pool = UpstreamPool(
        limit=cfg.upstream_pool_size,
        connect_timeout_s=cfg.upstream_connect_timeout_s,
        ssl_context=identity.live_ssl_context() if identity is not None else None,
        keepalive_s=30.0,
    )
    refresher = asyncio.create_task(identity.keep_current()) if identity is not None else None
    svc = RouterService(cfg, pool)
    app = build_app(svc)
    runner = web.AppRunner(
        app,
        handler_cancellation=cfg.listen.cancel_on_disconnect,
        access_log=None,
        keepalive_timeout=cfg.listen.keepalive_timeout_s,
        # a long prompt is taken in large chunks: fewer pauses of the socket and fewer pieces to join
        read_bufsize=1 << 19,
    )
    await runner.setup()
    # SO_REUSEPORT only between the workers of this router: main() holds the port lock that keeps other routers out.
    shared = cfg.listen.workers > 1
    site = web.TCPSite(runner, cfg.listen.host, cfg.listen.port, reuse_port=shared, backlog=2048)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        address = join_host_port(cfg.listen.host, cfg.listen.port)
        raise BindError(address, reason_of(exc), "--port or listen.port (INFERMESH_ROUTER__LISTEN__PORT)") from None
    grpc_server = None
    if cfg.listen.grpc_port is not None:
        try:
            grpc_server = await start_grpc(svc, cfg.listen.host, cfg.listen.grpc_port, reuse_port=shared)
        except BindError:
            await runner.cleanup()
            raise
    log_event(
        "router listening",
        host=cfg.listen.host,
        port=cfg.listen.port,
        grpc_port=cfg.listen.grpc_port,
        pid=os.getpid(),
        models=svc.view.models(),
        agent=cfg.agent.address,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        flush_access_log()
        log_event("router stopping", pid=os.getpid())
        if grpc_server is not None:
            await grpc_server.stop(grace=2.0)
        await runner.cleanup()
        await pool.close()
        if refresher is not None:
            refresher.cancel()


def _worker(config_path: str | None) -> None:
    from router.obs import setup_logging

    cfg = load_config(config_path)
    setup_logging(cfg.logging.level.upper())
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is optional on platforms without it
        pass
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(cfg))
    except BindError as exc:
        fail("infermesh router", exc)
        sys.exit(EXIT_BIND)


def main(argv: Sequence[str] | None = None) -> int:
    ap = Parser(
        prog="infermesh router",
        description="Run the InferMesh inference router.",
        epilog=examples(
            "infermesh router --config docs/examples/router.yaml",
            "infermesh router --config router.yaml --port 8080 --workers 4",
            "infermesh router --config router.yaml --check",
        ),
    )
    ap.add_argument("--config", help="YAML config file (env INFERMESH_ROUTER__SECTION__FIELD overrides it)")
    ap.add_argument("--port", type=int, help="HTTP port (overrides listen.port)")
    ap.add_argument("--grpc-port", type=int, help="KServe gRPC port (overrides listen.grpc_port)")
    ap.add_argument("--workers", type=int, help="worker processes sharing the port (overrides listen.workers)")
    ap.add_argument("--check", action="store_true", help="validate the config and exit")
    ap.add_argument(
        "--print-config", action="store_true", help="print the resolved config (values from the environment marked)"
    )
    args = ap.parse_args(list(argv) if argv is not None else None)
    # CLI flags become env overrides so that spawned workers read exactly the same config.
    if args.port is not None:
        os.environ["INFERMESH_ROUTER__LISTEN__PORT"] = str(args.port)
    if args.grpc_port is not None:
        os.environ["INFERMESH_ROUTER__LISTEN__GRPC_PORT"] = str(args.grpc_port)
    if args.workers is not None:
        os.environ["INFERMESH_ROUTER__LISTEN__WORKERS"] = str(args.workers)
    if args.config and not Path(args.config).exists():
        print(f"infermesh router: config file {args.config} does not exist", file=sys.stderr)
        return 2
    try:
        cfg, origin = load_config_with_origin(args.config)
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"infermesh router: config error: {line}", file=sys.stderr)
        return 2
    if args.print_config:
        print(resolved(cfg, origin, args.config or "defaults"), end="")
        return 0
    if cfg.listen.workers > 1 and cfg.listen.port == 0:
        print("infermesh router: listen.port: workers > 1 need a fixed port (got 0)", file=sys.stderr)
        return 2
    if args.check:
        print("config ok")
        return 0
    locks = []
    for port, change in (
        (cfg.listen.port, "--port or listen.port (INFERMESH_ROUTER__LISTEN__PORT)"),
        (cfg.listen.grpc_port, "--grpc-port or listen.grpc_port (INFERMESH_ROUTER__LISTEN__GRPC_PORT)"),
    ):
        if not port:
            continue
        lock = PortLock(port)
        holder = lock.acquire()
        if holder is not None:
            by = f" (pid {holder})" if holder else ""
            taken = f"another router serves this port{by}; its workers alone may share it"
            return fail("infermesh router", BindError(join_host_port(cfg.listen.host, port), taken, change))
        locks.append(lock)
        reason = probe_reason(cfg.listen.host, port)  # another program: found here, before any worker starts
        if reason is not None:
            for lock in locks:
                lock.release()
            return fail("infermesh router", BindError(join_host_port(cfg.listen.host, port), reason, change))
    try:
        return _run_workers(args.config, cfg.listen.workers)
    finally:
        for lock in locks:
            lock.release()


def _run_workers(config_path: str | None, workers: int) -> int:
    if workers == 1:
        _worker(config_path)
        return 0
    # Several workers: one shared multiprocess metrics dir so /metrics on any worker shows the whole router.
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="infermesh-router-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(config_path,), daemon=False) for _ in range(workers)]
    for p in procs:
        p.start()

    def _forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    # A worker that exits (a bind that failed, a crash) stops the others: a router runs whole or not at all.
    code = 0
    alive: dict[object, Any] = {p.sentinel: p for p in procs}
    while alive:
        for sentinel in mp_connection.wait(list(alive)):  # type: ignore[arg-type]
            p = alive.pop(sentinel)
            p.join()
            if p.exitcode and not code:
                code = p.exitcode if p.exitcode > 0 else 1
                _forward(signal.SIGTERM, None)
    if own_dir:
        import shutil

        shutil.rmtree(own_dir, ignore_errors=True)
    return code
