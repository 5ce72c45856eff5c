"""`infermesh demo`: the whole mesh on one machine, in the foreground, on the embedded default.

It migrates and seeds the portal's database, starts the portal, a Celery worker and beat, three agents (gossip and
Raft), emulated runtimes and a router, replays a slice of the Azure LLM conversation trace through the router, and
on Ctrl-C (SIGINT or SIGTERM) stops every process it started: each child leads its own process group, and the
whole group is signalled, so grandchildren (Celery's pool) go too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import ctypes
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from agents import datadir
from agents.binding import free_port

ROOT = Path(__file__).resolve().parent.parent
# A slice of the Azure LLM trace shipped with the package (CC-BY 4.0; source and attribution in its README.md).
DEFAULT_TRACE = Path(__file__).resolve().parent / "data" / "traces" / "azure_llm_2023_conv.csv"
EMBEDDED_OVERRIDES = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
KEY_NAME = "demo-replay"  # the inference key the demo creates in the portal on start (and uses for its replay)
MODEL = "demo-llm"
TENANT = "demo"
# The three agents: portal node name (from meshweb/demo_data.py), zone, emulated GPU profiles.
AGENTS = [
    ("gpu-a1", "zone-a", ["h100", "h100"]),
    ("gpu-a2", "zone-a", ["h100"]),
    ("gpu-b1", "zone-b", ["a100-80gb"]),
]
# The fault drill: this agent's first GPU reports an uncorrectable ECC error `--fault-at` seconds after it starts and
# is cleared (a driver reload) `--fault-clear-after` seconds later; the portal's beat quarantines the node and, after
# the cool-down, releases it.
DRILL_AGENT = 2
TRAINING_STEPS = 2000  # about 20 minutes of the demo's training job
DRILL_COOLDOWN_S = "60"  # the portal's quarantine cool-down in the demo (INFERMESH_QUARANTINE_COOLDOWN_S overrides)
# Emulator profile per GPU profile of the agents.
RUNTIME_PROFILE = {"h100": "h100", "a100-80gb": "a100"}
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 90.0


class DemoError(RuntimeError):
    """A service did not start; the message names it and quotes its log."""


# -- ports -------------------------------------------------------------------------------------------------------------


class Ports:
    """Hands out the internal ports: fixed defaults, consecutive from --base-port, or free ones (--base-port 0)."""

    def __init__(self, base: int | None) -> None:
        self.base = base
        self.next = base or 0
        self.taken: set[int] = set()

    def get(self, default: int, kind: int = socket.SOCK_STREAM) -> int:
        if self.base is None:
            port = default
        elif self.base == 0:
            port = free_port(udp_too=kind == socket.SOCK_DGRAM)
            while port in self.taken:
                port = free_port(udp_too=kind == socket.SOCK_DGRAM)
        else:
            port = self.next
            self.next += 1
        self.taken.add(port)
        return port


def port_taken(host: str, port: int, udp: bool = False) -> str | None:
    """Why `port` cannot be bound now (None when it can); gossip needs it for both TCP and UDP."""
    from agents.binding import probe_reason, reason_of

    reason = probe_reason(host, port)
    if reason is not None or not udp:
        return reason
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as u:
        try:
            u.bind((host, port))
        except OSError as exc:
            return f"UDP: {reason_of(exc)}"
    return None


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP `port` on this machine (Linux /proc/net/tcp, tcp6)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def group_members(pgid: int) -> list[int]:
    """Every live process of process group `pgid` (a child of the demo leads its own)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def group_listens_on(pgid: int, port: int) -> bool:
    """Whether the listening socket of `port` belongs to a process of group `pgid`: the demo probes its own child,
    not whatever else answers on the port."""
    inodes = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    for pid in group_members(pgid):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return True
    return False


# -- processes ---------------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: a new session (own process group) and SIGTERM if the demo dies."""
    os.setsid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    name: str
    argv: list[str]
    log: Path
    ready: Callable[[], bool] | None = None
    proc: subprocess.Popen[bytes] | None = None
    ports: tuple[int, ...] = ()  # TCP ports it listens on: ready only once its own process holds them

    def holds_ports(self) -> bool:
        if self.proc is None or not sys.platform.startswith("linux"):
            return self.proc is not None
        return all(group_listens_on(self.proc.pid, port) for port in self.ports)

    def start(self, env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                start_new_session=not sys.platform.startswith("linux"),
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


@dataclass
class Fleet:
    services: list[Service] = field(default_factory=list)

    def add(self, service: Service, env: dict[str, str]) -> Service:
        self.services.append(service)
        service.start(env)
        return service

    def wait_ready(self, timeout_s: float, stopping: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout_s
        pending = [s for s in self.services if s.ready is not None]
        while pending:
            if stopping():
                raise KeyboardInterrupt
            for service in list(pending):
                if not service.alive():
                    code = service.proc.returncode if service.proc else None
                    raise DemoError(
                        f"{service.name} exited with code {code}; its log ({service.log}):\n{service.tail()}"
                    )
                assert service.ready is not None
                if service.ready() and service.holds_ports():
                    pending.remove(service)
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise DemoError(f"not ready after {timeout_s:.0f}s: {names}; last log lines:\n{pending[0].tail()}")
            time.sleep(0.2)

    def dead(self) -> Service | None:
        return next((s for s in self.services if not s.alive()), None)

    def stop(self) -> None:
        """SIGTERM to every process group, a grace period, then SIGKILL to whatever is left."""
        for service in reversed(self.services):
            service.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for service in self.services:
            if service.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        # Also catches grandchildren that outlived their group leader.
        for service in self.services:
            service.signal_group(signal.SIGKILL)
            if service.proc is not None and service.proc.poll() is None:
                service.proc.wait(timeout=5)


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _probe(url: str) -> Callable[[], bool]:
    return lambda: http_ok(url)


def infermesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshweb.cli", *args]


def celery_argv(role: str) -> list[str]:
    """`infermesh worker` / `infermesh beat` when present, else Celery's own CLI on the portal's app."""
    from meshweb.cli import COMMANDS

    if role in COMMANDS:
        return infermesh(role)
    base = [sys.executable, "-m", "celery", "-A", "meshweb.celery:app"]
    if role == "worker":
        return [*base, "worker", "--loglevel", "INFO", "--concurrency", "1"]
    return [*base, "beat", "--loglevel", "INFO"]


# -- configuration files -----------------------------------------------------------------------------------------------


@dataclass
class Layout:
    host: str
    portal_port: int
    router_port: int
    router_grpc_port: int
    agent_grpc: list[int]
    agent_http: list[int]
    agent_gossip: list[int]
    runtime_ports: list[int]
    runtime_agent: list[int]  # index of the agent each runtime belongs to
    runtime_gpu: list[int]  # GPU index on that agent
    rdzv_port: int  # the training job's torch rendezvous (the scheduler hands it to the job's first worker)

    def url(self, port: int, path: str = "") -> str:
        return f"http://{self.host}:{port}{path}"


def plan(args: argparse.Namespace) -> Layout:
    ports = Ports(args.base_port)
    ports.taken.update({args.portal_port, args.router_port})
    agent_grpc = [ports.get(7070 + i) for i in range(len(AGENTS))]
    agent_http = [ports.get(9464 + i) for i in range(len(AGENTS))]
    agent_gossip = [ports.get(7946 + i, socket.SOCK_DGRAM) for i in range(len(AGENTS))]
    router_grpc = ports.get(args.router_port + 1)
    # One runtime per emulated GPU, round the agents, until --runtimes are placed.
    slots = [(a, g) for a, (_, _, gpus) in enumerate(AGENTS) for g in range(len(gpus))]
    chosen = [slots[i % len(slots)] for i in range(args.runtimes)]
    runtime_ports = [ports.get(9001 + i) for i in range(args.runtimes)]
    rdzv_port = ports.get(29500)
    return Layout(
        host=args.host,
        portal_port=args.portal_port,
        router_port=args.router_port,
        router_grpc_port=router_grpc,
        agent_grpc=agent_grpc,
        agent_http=agent_http,
        agent_gossip=agent_gossip,
        runtime_ports=runtime_ports,
        runtime_agent=[a for a, _ in chosen],
        runtime_gpu=[g for _, g in chosen],
        rdzv_port=rdzv_port,
    )


def taken_ports(layout: Layout, args: argparse.Namespace) -> list[str]:
    """Every port of the plan that cannot be bound, as `host:port (service): reason; change FLAG`."""
    internal = "--base-port (0 = any free ports)"
    wanted: list[tuple[int, str, str, bool]] = [
        (layout.portal_port, "portal", "--portal-port", False),
        (layout.router_port, "router", "--router-port", False),
        (layout.router_grpc_port, "router gRPC", internal, False),
    ]
    for i, (name, _, _) in enumerate(AGENTS):
        wanted += [
            (layout.agent_grpc[i], f"agent-{name} gRPC", internal, False),
            (layout.agent_http[i], f"agent-{name} /metrics", internal, False),
            (layout.agent_gossip[i], f"agent-{name} gossip", internal, True),
        ]
    wanted += [(port, f"runtime-{r + 1}", internal, False) for r, port in enumerate(layout.runtime_ports)]
    wanted.append((layout.rdzv_port, "training rendezvous", internal, False))
    problems = []
    seen: dict[int, str] = {}
    for port, service, change, udp in wanted:
        if port in seen:
            problems.append(f"{args.host}:{port} ({service}) is also planned for {seen[port]}; change {change}")
            continue
        seen[port] = service
        reason = port_taken(args.host, port, udp)
        if reason is not None:
            problems.append(f"{args.host}:{port} ({service}): {reason}; change {change}")
    return problems


def agent_config(
    layout: Layout,
    i: int,
    data_dir: Path,
    credential_file: Path | None = None,
    drill: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """`drill`: (at_s, clear_after_s) of a scheduled ECC fault on this agent's first GPU."""
    name, zone, gpus = AGENTS[i]
    gpu_options: dict[str, Any] = {"profiles": gpus, "seed": i}
    if drill is not None:
        gpu_options["faults"] = [{"index": 0, "fault": "ecc", "at_s": drill[0], "clear_after_s": drill[1]}]
    host = layout.host
    runtimes = [
        {"url": layout.url(port), "flavor": "vllm", "gpus": [layout.runtime_gpu[r]]}
        for r, port in enumerate(layout.runtime_ports)
        if layout.runtime_agent[r] == i
    ]
    config: dict[str, Any] = {
        "node": {
            "id": name,
            "roles": ["gpu", "router", "coordinator", "trainer"],
            "zone": zone,
            "labels": {"demo": "true"},
        },
        "listen": {"grpc": f"{host}:{layout.agent_grpc[i]}", "http": f"{host}:{layout.agent_http[i]}"},
        "shutdown": {"drain_s": 0.2, "grace_s": 1.0},
        "gpu": {"source": "emulated", "options": gpu_options, "poll_interval_s": 2.0},
        "runtimes": runtimes,
        "gossip": {
            "bind": f"{host}:{layout.agent_gossip[i]}",
            "region": "demo",
            "host": name,
            "seeds": [f"{host}:{p}" for p in layout.agent_gossip],
        },
        "raft": {
            "node_id": i + 1,
            "cluster_id": "infermesh-demo",
            "peers": {j + 1: f"{host}:{p}" for j, p in enumerate(layout.agent_grpc)},
            "data_dir": str(data_dir / "raft" / f"node-{i + 1}"),
        },
        # The Raft leader's scheduler places the demo's training job; each agent's trainer runs its workers.
        "scheduler": {"rdzv_port_base": layout.rdzv_port, "rdzv_port_span": 1},
        "trainer": {},
        "logging": {"level": "info", "json": True},
    }
    if credential_file is not None:
        # The portal pushes tenants, models, jobs and node status here; the agent reports telemetry back.
        config["portal"] = {
            "url": f"ws://{host}:{layout.portal_port}/ws/agent/",
            "credential_file": str(credential_file),
        }
    return config


def router_config(layout: Layout, usage_credential: Path | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {}
    if usage_credential is not None:  # usage goes to the portal under the router's node (the first agent's)
        usage = {"portal_url": layout.url(layout.portal_port), "credential_file": str(usage_credential)}
    return {
        "listen": {"host": layout.host, "port": layout.router_port, "grpc_port": layout.router_grpc_port},
        "agent": {"address": f"{layout.host}:{layout.agent_grpc[0]}", "node": AGENTS[0][0]},
        "usage": usage,
        "targets": [
            {"model": MODEL, "url": layout.url(port), "runtime": "vllm", "node": AGENTS[layout.runtime_agent[r]][0]}
            for r, port in enumerate(layout.runtime_ports)
        ],
        "default_policy": {"strategy": "hybrid_mesh"},
        "logging": {"level": "info", "access_log": False},
    }


# -- trace replay ------------------------------------------------------------------------------------------------------


def load_trace_slice(path: Path, count: int, rate: float) -> list[tuple[float, int, int]]:
    """The first `count` requests of the trace: (send offset s, prompt tokens, output tokens).

    The trace's own gaps are kept in shape but scaled so the slice arrives at `rate` requests per second on average.
    """
    rows: list[tuple[datetime, int, int]] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            stamp = datetime.fromisoformat(row["TIMESTAMP"][:26])
            rows.append((stamp, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
            if len(rows) >= count:
                break
    if not rows:
        raise DemoError(f"the trace {path} holds no requests")
    t0 = rows[0][0]
    offsets = [(r[0] - t0).total_seconds() for r in rows]
    span = offsets[-1] or 1.0
    scale = (len(rows) / rate) / span
    return [(off * scale, ctx, gen) for off, (_, ctx, gen) in zip(offsets, rows, strict=True)]


@dataclass
class ReplayStats:
    total: int
    sent: int = 0
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)

    def line(self) -> str:
        lat = sorted(self.latencies)
        p50 = f"{lat[len(lat) // 2]:.2f}s" if lat else "-"
        p95 = f"{lat[min(len(lat) - 1, int(len(lat) * 0.95))]:.2f}s" if lat else "-"
        return (
            f"replay: {self.ok + self.failed}/{self.total} done, {self.ok} ok, {self.failed} failed, "
            f"{self.sent - self.ok - self.failed} in flight, latency p50 {p50} p95 {p95}"
        )


async def replay(
    url: str, requests: list[tuple[float, int, int]], stopping: Callable[[], bool], max_tokens: int, api_key: str
) -> ReplayStats:
    import aiohttp

    stats = ReplayStats(total=len(requests))
    tty = sys.stdout.isatty()
    last_print = 0.0

    def progress(final: bool = False) -> None:
        nonlocal last_print
        now = time.monotonic()
        if not final and now - last_print < (0.5 if tty else 5.0):
            return
        last_print = now
        print(("\r" + stats.line() + "   ") if tty else stats.line(), end="" if tty and not final else "\n", flush=True)

    async def one(session: aiohttp.ClientSession, ctx: int, gen: int) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "demo"}],
            "prompt_tokens": min(ctx, 8000),  # the emulator's extension: pretend the prompt has this many tokens
            "max_tokens": max(1, min(gen, max_tokens)),
        }
        started = time.monotonic()
        try:
            async with session.post(url, json=body, headers={"Authorization": f"Bearer {api_key}"}) as response:
                await response.read()
                if response.status == 200:
                    stats.ok += 1
                    stats.latencies.append(time.monotonic() - started)
                else:
                    stats.failed += 1
        except (aiohttp.ClientError, TimeoutError):
            stats.failed += 1
        progress()

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.monotonic()
        tasks = []
        for offset, ctx, gen in requests:
            while time.monotonic() - start < offset:
                if stopping():
                    break
                await asyncio.sleep(min(0.2, offset - (time.monotonic() - start)))
            if stopping():
                break
            tasks.append(asyncio.create_task(one(session, ctx, gen)))
            stats.sent += 1
            progress()
        while tasks and not stopping():
            _, pending = await asyncio.wait(tasks, timeout=0.5)
            tasks = list(pending)
        for task in tasks:
            task.cancel()
    progress(final=True)
    return stats


# -- the command -------------------------------------------------------------------------------------------------------


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {value!r}")
    return int(value)


def _base_port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) < 65000:
        raise argparse.ArgumentTypeError(f"expected 0 (free ports) or a port below 65000, got {value!r}")
    return int(value)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from agents.argparsing import Parser, examples

    parser = Parser(
        prog="infermesh demo",
        epilog=examples(
            "infermesh demo",
            "infermesh demo --portal-port 8100 --router-port 8180 --base-port 0   # any free internal ports",
            'make demo ARGS="--no-replay"',
        ),
        description="Run the whole mesh on this machine on the embedded default (Ctrl-C stops everything).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address every service binds (default 127.0.0.1)")
    parser.add_argument("--portal-port", type=_port, default=8000, help="portal HTTP + WebSocket (default 8000)")
    parser.add_argument("--router-port", type=_port, default=8080, help="router HTTP (default 8080)")
    parser.add_argument(
        "--base-port",
        type=_base_port,
        default=None,
        help="internal ports (agents, gossip, runtimes, router gRPC) counted up from here; 0 = any free ports "
        "(default: agents gRPC 7070-7072, /metrics 9464-9466, gossip 7946-7948, runtimes 9001+, router gRPC "
        "router port + 1)",
    )
    parser.add_argument("--runtimes", type=int, default=4, help="emulated runtimes (default 4)")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $INFERMESH_DATA_DIR")
    parser.add_argument("--no-replay", action="store_true", help="do not replay the trace through the router")
    parser.add_argument("--replay-requests", type=int, default=300, help="requests of the trace slice (default 300)")
    parser.add_argument("--replay-rate", type=float, default=4.0, help="mean requests/s of the replay (default 4)")
    parser.add_argument("--replay-max-tokens", type=int, default=128, help="cap on output tokens per request")
    parser.add_argument(
        "--trace", type=Path, default=DEFAULT_TRACE, help="Azure LLM trace CSV (default: the shipped slice)"
    )
    parser.add_argument("--exit-after-replay", action="store_true", help="stop everything once the replay is done")
    parser.add_argument(
        "--fault-at",
        type=float,
        default=120.0,
        help=f"seconds after start when {AGENTS[DRILL_AGENT][0]}'s GPU reports an uncorrectable ECC error, so that "
        "the portal quarantines the node (a fault drill; 0: none; default 120)",
    )
    parser.add_argument(
        "--fault-clear-after", type=float, default=30.0, help="seconds until the drill's fault clears (default 30)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.runtimes <= 32:
        parser.error("--runtimes must be between 1 and 32")
    if args.portal_port == args.router_port:
        parser.error("--portal-port and --router-port must differ")
    if args.replay_requests < 1 or args.replay_rate <= 0 or args.replay_max_tokens < 1:
        parser.error("--replay-requests, --replay-rate and --replay-max-tokens must be positive")
    if args.fault_at < 0 or args.fault_clear_after < 0:
        parser.error("--fault-at and --fault-clear-after must be >= 0 (--fault-at 0: no fault drill)")
    if not args.no_replay and not args.trace.is_file():
        parser.error(f"--trace: no such file {args.trace} (or pass --no-replay)")
    return args


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return Path(args.data_dir).expanduser().resolve()
    return datadir.data_dir()


def prepare_portal(data_dir: Path, env: dict[str, str]) -> tuple[list[str], dict[str, str], str]:
    """Migrate, seed and enroll the agents' nodes in this process (Django on the children's embedded settings).

    Returns the seed's lines, a fresh credential per agent node (earlier ones are revoked) and a fresh inference key
    of the demo tenant, created through the portal's own service like a key made in the dashboard (earlier demo keys
    are revoked). The routers learn it from their agents.
    """
    os.environ.update({k: v for k, v in env.items() if k in {"INFERMESH_DATA_DIR", "INFERMESH_ADMIN_PASSWORD"}})
    for name in EMBEDDED_OVERRIDES:
        os.environ.pop(name, None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshweb.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", interactive=False, verbosity=0)
    from meshweb.demo_data import seed_demo
    from meshweb.fleet.models import Node
    from meshweb.identity.credentials import node_credential_issue
    from meshweb.tenancy.models import InferenceKey, Tenant
    from meshweb.tenancy.scoped.writes import object_update
    from meshweb.tenancy.services import SYSTEM, inference_key_create, inference_key_revoke

    lines = seed_demo()
    credentials = {
        name: node_credential_issue(principal=SYSTEM, node=Node.objects.get(name=name))[1] for name, _, _ in AGENTS
    }
    tenant = Tenant.objects.get(slug=TENANT)
    # Room for the replay's bursts; the limits are the portal's, every router enforces them.
    object_update(principal=SYSTEM, obj=tenant.quota, data={"requests_per_s": 200.0, "tokens_per_min": 5_000_000})
    for old in InferenceKey.objects.filter(tenant=tenant, name=KEY_NAME, revoked_at__isnull=True):
        inference_key_revoke(principal=SYSTEM, key=old)
    _, api_key = inference_key_create(principal=SYSTEM, tenant=tenant, name=KEY_NAME)
    lines.append(submit_training_job(tenant))
    connections.close_all()
    return lines, credentials, api_key


def submit_training_job(tenant: Any) -> str:
    """A small DDP job of the demo tenant (real PyTorch workers on the CPU, checkpointing as they go), through the
    portal's own service, so that the jobs page has a live job; the train extra provides torch."""
    if importlib.util.find_spec("torch") is None:
        return "demo: no training job: PyTorch is not installed (pip install -e '.[train]' adds a live DDP job)"
    from meshweb.tenancy.services import SYSTEM
    from meshweb.training.services import job_submit

    spec = {
        "image": "local",
        "entrypoint": ["python", "-m", "agents.trainer.worker"],
        "args": ["--steps", str(TRAINING_STEPS), "--hidden", "256", "--step-sleep", "0.5"],
        "workers": {"min": 2, "max": 2},
        "gpus_per_worker": 1,
        "max_runtime_s": 3600,
    }
    job = job_submit(principal=SYSTEM, tenant=tenant, name=f"demo-ddp-{time.strftime('%H%M%S')}", spec=spec).job
    return f"demo: training job {job.name} submitted (2 DDP workers, {TRAINING_STEPS} steps; the dashboard's jobs page)"


def demo_main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    layout = plan(args)
    # Every port is checked before anything starts: a port taken by something else is never mistaken for ours.
    problems = taken_ports(layout, args)
    if problems:
        print("demo: cannot start, ports not free:\n  " + "\n  ".join(problems), file=sys.stderr, flush=True)
        return 2
    data_dir = _data_dir(args)
    demo_dir = data_dir / "demo"
    logs = demo_dir / "logs"
    if demo_dir.exists():
        shutil.rmtree(demo_dir / "raft", ignore_errors=True)  # a fresh Raft cluster each run; the portal DB stays
    logs.mkdir(parents=True, exist_ok=True)

    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        print(f"\ndemo: {signal.Signals(signum).name} received, stopping every process …", flush=True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    dropped = [name for name in EMBEDDED_OVERRIDES if os.environ.get(name)]
    if dropped:
        print(f"demo: runs on the embedded default; ignoring {', '.join(dropped)} from the environment", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in EMBEDDED_OVERRIDES}
    password = os.environ.get("INFERMESH_ADMIN_PASSWORD") or secrets.token_urlsafe(9)
    env.update(
        {
            "INFERMESH_DATA_DIR": str(data_dir),
            "INFERMESH_ADMIN_PASSWORD": password,
            "INFERMESH_ROUTER_METRICS_URL": layout.url(layout.router_port, "/metrics"),
            "CSRF_TRUSTED_ORIGINS": f"http://{args.host}:{args.portal_port},http://localhost:{args.portal_port}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.setdefault("INFERMESH_QUARANTINE_COOLDOWN_S", DRILL_COOLDOWN_S)  # the drill's node comes back within minutes

    print(f"demo: data in {data_dir}, logs in {logs}", flush=True)
    try:
        seed_lines, credentials, api_key = prepare_portal(data_dir, env)
    except Exception as exc:
        print(f"demo: the portal database could not be prepared: {exc}", file=sys.stderr)
        return 1
    for line in seed_lines:
        print(line, flush=True)
    login = f"admin / {password}" if any(password in line for line in seed_lines) else "admin (password unchanged)"

    fleet = Fleet()
    manifest: dict[str, Any] = {}
    try:
        for r, port in enumerate(layout.runtime_ports):
            profile = RUNTIME_PROFILE[AGENTS[layout.runtime_agent[r]][2][layout.runtime_gpu[r]]]
            argv = infermesh("emulate-runtime", "--host", args.host, "--port", str(port), "--profile", profile)
            argv += ["--flavor", "vllm", "--model", MODEL, "--seed", str(r)]
            fleet.add(
                Service(
                    f"runtime-{r + 1}",
                    argv,
                    logs / f"runtime-{r + 1}.log",
                    _probe(layout.url(port, "/health")),
                    ports=(port,),
                ),
                env,
            )
        fleet.add(
            Service(
                "portal",
                infermesh("portal", "--bind", f"{args.host}:{args.portal_port}", "--no-migrate"),
                logs / "portal.log",
                lambda: http_ok(layout.url(layout.portal_port, "/healthz")),
                ports=(layout.portal_port,),
            ),
            env,
        )
        fleet.add(Service("celery-worker", celery_argv("worker"), logs / "celery-worker.log"), env)
        fleet.add(Service("celery-beat", celery_argv("beat"), logs / "celery-beat.log"), env)
        configs = demo_dir / "config"
        configs.mkdir(parents=True, exist_ok=True)
        for i, (name, _, _) in enumerate(AGENTS):
            secret = configs / f"agent-{name}.credential"
            secret.write_text(credentials[name] + "\n")
            secret.chmod(0o600)
            path = configs / f"agent-{name}.yaml"
            drill = (args.fault_at, args.fault_clear_after) if i == DRILL_AGENT and args.fault_at > 0 else None
            path.write_text(yaml.safe_dump(agent_config(layout, i, demo_dir, secret, drill), sort_keys=False))
            fleet.add(
                Service(
                    f"agent-{name}",
                    infermesh("agent", "--config", str(path)),
                    logs / f"agent-{name}.log",
                    _probe(layout.url(layout.agent_http[i], "/healthz")),
                    ports=(layout.agent_grpc[i], layout.agent_http[i]),
                ),
                env,
            )
        router_path = configs / "router.yaml"
        router_path.write_text(
            yaml.safe_dump(router_config(layout, configs / f"agent-{AGENTS[0][0]}.credential"), sort_keys=False)
        )
        fleet.add(
            Service(
                "router",
                infermesh("router", "--config", str(router_path)),
                logs / "router.log",
                lambda: http_ok(layout.url(layout.router_port, "/healthz")),
                ports=(layout.router_port, layout.router_grpc_port),
            ),
            env,
        )
        fleet.wait_ready(READY_TIMEOUT_S, lambda: stopping)
        for service in fleet.services:
            if not service.alive():
                raise DemoError(f"{service.name} exited; its log ({service.log}):\n{service.tail()}")

        manifest = {
            "pid": os.getpid(),
            "data_dir": str(data_dir),
            "dashboard": layout.url(layout.portal_port, "/dashboard/"),
            "portal": layout.url(layout.portal_port),
            "api": layout.url(layout.portal_port, "/api/v1/"),
            "portal_metrics": layout.url(layout.portal_port, "/metrics"),
            "router": layout.url(layout.router_port),
            "router_metrics": layout.url(layout.router_port, "/metrics"),
            "router_grpc": f"{args.host}:{layout.router_grpc_port}",
            "agents": [
                {"node": AGENTS[i][0], "grpc": f"{args.host}:{g}", "http": layout.url(h), "gossip": f"{args.host}:{u}"}
                for i, (g, h, u) in enumerate(
                    zip(layout.agent_grpc, layout.agent_http, layout.agent_gossip, strict=True)
                )
            ],
            "runtimes": [layout.url(p) for p in layout.runtime_ports],
            "processes": {s.name: s.proc.pid for s in fleet.services if s.proc is not None},
            "admin": login,
            "api_key": api_key,  # the demo tenant's inference key, made in the portal on start
            "api_key_name": KEY_NAME,
        }
        # the manifest says the mesh is ready: written once the router, through its agent, knows the portal's key
        # and serves the demo's model to it
        wait_for_key(layout.url(layout.router_port, "/v1/models"), api_key, MODEL, lambda: stopping)
        (demo_dir / "services.json").write_text(json.dumps(manifest, indent=2))
        print_banner(manifest, args, logs, api_key)

        if not args.no_replay:
            requests = load_trace_slice(args.trace, args.replay_requests, args.replay_rate)
            print(
                f"demo: replaying {len(requests)} requests of {args.trace.name} at ~{args.replay_rate:g}/s", flush=True
            )
            url = layout.url(layout.router_port, "/v1/chat/completions")
            asyncio.run(
                replay(url, requests, lambda: stopping or fleet.dead() is not None, args.replay_max_tokens, api_key)
            )
            if args.exit_after_replay:
                stopping = True
        while not stopping and fleet.dead() is None:
            time.sleep(0.5)
        died = fleet.dead()
        if died is not None and not stopping:
            code = died.proc.returncode if died.proc else None
            raise DemoError(f"{died.name} exited unexpectedly (code {code}); its log ({died.log}):\n{died.tail()}")
        return 0
    except KeyboardInterrupt:
        return 0
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        fleet.stop()
        left = [s.name for s in fleet.services if s.alive()]
        print(
            "demo: stopped" + (f" (still running: {', '.join(left)})" if left else ", nothing left running"), flush=True
        )


def wait_for_key(url: str, api_key: str, model: str, stopping: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """The key and the model were made in the portal: wait until the router, through its agent, knows the key and
    lists the model for it (the catalog's records may reach it after the key's)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stopping():
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                if any(m.get("id") == model for m in json.loads(resp.read()).get("data", [])):
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.3)
    raise DemoError(
        f"the router did not learn the demo's inference key and model {model!r} from its agent within {timeout_s:g}s"
    )


def print_banner(manifest: dict[str, Any], args: argparse.Namespace, logs: Path, api_key: str) -> None:
    agents = ", ".join(a["grpc"] for a in manifest["agents"])
    lines = [
        "",
        "InferMesh demo is running.",
        f"  dashboard       {manifest['dashboard']}   login {manifest['admin']}",
        f"  REST API        {manifest['api']}   (docs {manifest['portal']}/api/docs/; a token: "
        f"infermesh token create --tenant {TENANT} --role member)",
        f"  portal metrics  {manifest['portal_metrics']}",
        f"  router          {manifest['router']}/v1/chat/completions   API key {api_key}, model {MODEL}",
        f"  another key     {manifest['dashboard']}keys/ (Create key; it works at the router within seconds), or "
        f"POST {manifest['api']}inference-keys/",
        f"  router metrics  {manifest['router_metrics']}",
        f"  agents (gRPC)   {agents}   e.g. infermesh ctl --agent {manifest['agents'][0]['grpc']} members",
        f"  agent metrics   {', '.join(a['http'] + '/metrics' for a in manifest['agents'])}",
        f"  runtimes        {', '.join(manifest['runtimes'])}",
        f"  logs            {logs}",
        *(
            [
                f"  fault drill     {AGENTS[DRILL_AGENT][0]}'s GPU reports an uncorrectable ECC error "
                f"{args.fault_at:g}s after start: the node is quarantined (dashboard overview, ctl nodes), its fault "
                f"clears {args.fault_clear_after:g}s later and it is released after the "
                f"{os.environ.get('INFERMESH_QUARANTINE_COOLDOWN_S') or DRILL_COOLDOWN_S}s cool-down"
            ]
            if args.fault_at > 0
            else []
        ),
        "",
        f"  curl -s {manifest['router']}/v1/chat/completions -H 'Authorization: Bearer {api_key}' "
        f'-H \'Content-Type: application/json\' -d \'{{"model": "{MODEL}", "messages": '
        '[{"role": "user", "content": "hello"}]}\'',
        "",
        "Press Ctrl-C to stop everything.",
        "",
    ]
    print("\n".join(lines), flush=True)
