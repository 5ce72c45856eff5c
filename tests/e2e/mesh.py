"""A whole mesh as real processes on loopback for the end-to-end tests: a Redis server of its own, a fresh PostgreSQL
database, the portal under uvicorn (`infermesh portal`), a Celery worker and beat, and agents forming a Raft group,
each linked to the portal, with emulated GPUs (and faults) and an emulated runtime. `agent_sections` adds config
sections per agent (e.g. scheduler and trainer); `runtime` and `celery` leave out what a test does not need."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import psycopg
import yaml

from agents.proto.infermesh.v1 import state_pb2, state_pb2_grpc, store_pb2, store_pb2_grpc
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
INFERMESH = [sys.executable, "-c", "import sys; from meshweb.cli import main; sys.exit(main())"]
T = TypeVar("T")

SEED = """
import json, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshweb.settings")
import django
django.setup()
from meshweb.tenancy.scoped.writes import object_create
from meshweb.fleet.models import Node, Region, Zone
from meshweb.identity.credentials import node_credential_issue
from meshweb.tenancy.services import SYSTEM, tenant_create, token_create
region = object_create(principal=SYSTEM, model=Region, data={"name": "region-1"})
zone = object_create(principal=SYSTEM, model=Zone, data={"name": "zone-a", "region": region})
out = {"credentials": {}}
for name in NAMES:
    node = object_create(principal=SYSTEM, model=Node,
                         data={"name": name, "address": "127.0.0.1:1", "zone": zone, "roles": ["coordinator", "gpu"]})
    out["credentials"][name] = node_credential_issue(principal=SYSTEM, node=node)[1]
tenant = tenant_create(principal=SYSTEM, slug="ops")
out["token"] = token_create(principal=SYSTEM, tenant=tenant, role="platform_admin", name="e2e")[1]
print(json.dumps(out))
"""


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0, every: float = 0.2) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` (and the last error) otherwise."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as exc:  # the thing is not there yet
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


class RedisServer:
    """A redis-server of the test's own (never the shared one), restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.exe = exe
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_for("redis", ping, timeout=15)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


class Database:
    """A fresh PostgreSQL database for one test module, dropped afterwards."""

    def __init__(self) -> None:
        base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/infermesh"
        self.admin_url = base.rsplit("/", 1)[0] + "/postgres"
        self.name = f"im_e2e_{uuid.uuid4().hex[:10]}"
        self.url = base.rsplit("/", 1)[0] + "/" + self.name
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return list(conn.execute(sql, args).fetchall())


@dataclass
class Agent:
    name: str
    raft_id: int
    grpc_port: int
    http_port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    faults: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


class Mesh:
    def __init__(
        self,
        workdir: Path,
        *,
        agents: int = 3,
        env: dict[str, str] | None = None,
        agent_sections: Callable[[Agent], dict[str, Any]] | None = None,
        runtime: bool = True,
        celery: bool = True,
    ) -> None:
        self.workdir = workdir
        self.agent_sections = agent_sections
        self.with_runtime = runtime
        self.with_celery = celery
        workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(workdir)
        self.db = Database()
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {
            k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
        } | {
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": self.db.url,
            "REDIS_URL": self.redis.url,
            "INFERMESH_DATA_DIR": str(workdir / "data"),
            "INFERMESH_DB_POOL_SIZE": "4",
            "INFERMESH_OUTBOX_POLL_S": "1",
            "INFERMESH_AGENT_HEARTBEAT_S": "0.5",
            "INFERMESH_AGENT_TELEMETRY_S": "0.5",
            "INFERMESH_HEARTBEAT_STALE_S": "30",
            "INFERMESH_QUARANTINE_PERIOD_S": "2",
            "INFERMESH_QUARANTINE_COOLDOWN_S": "5",
            "INFERMESH_QUARANTINE_WINDOW_S": "10",
            **(env or {}),
        }
        self.names = [f"node-{i}" for i in range(1, agents + 1)]
        self.agents = {
            name: Agent(name, i, free_port(), free_port(), workdir / f"{name}.yaml", workdir / f"{name}.log")
            for i, name in enumerate(self.names, start=1)
        }
        self.credentials: dict[str, str] = {}
        self.token = ""
        self.runtime: subprocess.Popen[bytes] | None = None
        self.runtime_port = free_port()

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*INFERMESH, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [*INFERMESH, *args], cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.redis.start()
        done = self.run("manage", "migrate", "--no-input")
        assert done.returncode == 0, done.stderr[-3000:]
        seed = subprocess.run(
            [sys.executable, "-c", f"NAMES = {self.names!r}\n{SEED}"],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert seed.returncode == 0, seed.stderr[-3000:]
        out = json.loads(seed.stdout.strip().splitlines()[-1])
        self.credentials, self.token = out["credentials"], out["token"]
        self.spawn("portal", "portal", "--bind", f"127.0.0.1:{self.port}", "--no-migrate")
        if self.with_celery:
            self.spawn("worker", "worker", "--pool", "threads", "--concurrency", "2")
            self.spawn("beat", "beat")
        if self.with_runtime:
            self.runtime = subprocess.Popen(
                [sys.executable, "-m", "agents.emulator", "--port", str(self.runtime_port), "--profile", "h100",
                 "--flavor", "vllm", "--model", "demo-llm", "--instant"],
                cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        wait_for("the portal", lambda: httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200, timeout=60)
        for agent in self.agents.values():
            self.start_agent(agent.name, wait=False)
        for agent in self.agents.values():
            self.wait_agent(agent.name)

    def close(self) -> None:
        for agent in self.agents.values():
            _stop(agent.proc)
        for proc in self.procs.values():
            _stop(proc)
        _stop(self.runtime)
        self.redis.stop()
        self.db.drop()

    def stop_process(self, name: str, sig: int = signal.SIGTERM) -> None:
        _stop(self.procs.get(name), sig)

    # -- agents --------------------------------------------------------------------------------------------------
    def write_agent_config(self, agent: Agent) -> None:
        peers = {a.raft_id: a.address for a in self.agents.values()}
        cfg: dict[str, Any] = {
            "node": {"id": agent.name, "roles": ["coordinator", "gpu"], "zone": "zone-a"},
            "listen": {"grpc": agent.address, "http": f"127.0.0.1:{agent.http_port}"},
            "shutdown": {"drain_s": 0, "grace_s": 0.5},
            "fusion": {"tick_s": 0.2},
            "gpu": {
                "source": "emulated",
                "options": {"profiles": ["h100"], "node": agent.name, "faults": agent.faults},
                "poll_interval_s": 0.3,
            },
            "raft": {"node_id": agent.raft_id, "cluster_id": "e2e", "peers": peers, "tick_ms": 50,
                     "data_dir": f"raft/{agent.name}"},
            "portal": {"url": f"ws://127.0.0.1:{self.port}/ws/agent/", "credential": self.credentials[agent.name],
                       "reconnect_max_s": 1.0},
        }  # fmt: skip
        if self.agent_sections is not None:
            for key, value in self.agent_sections(agent).items():
                base = cfg.get(key)
                cfg[key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
        if agent.name == self.names[-1] and self.with_runtime:
            cfg["runtimes"] = [{"url": f"http://127.0.0.1:{self.runtime_port}", "flavor": "vllm", "gpus": [0]}]
            cfg["scrape"] = {"interval_s": 0.3}
        agent.config.write_text(yaml.safe_dump(cfg))

    def start_agent(self, name: str, *, faults: list[str] | None = None, wait: bool = True) -> None:
        agent = self.agents[name]
        agent.faults = faults or []
        self.write_agent_config(agent)
        log = agent.log.open("ab")
        agent.proc = subprocess.Popen(
            [*INFERMESH, "agent", "--config", str(agent.config)],
            cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        if wait:
            self.wait_agent(name)

    def wait_agent(self, name: str) -> None:
        agent = self.agents[name]

        def serving() -> bool:
            assert agent.proc is not None and agent.proc.poll() is None, agent.log.read_text()[-3000:]
            self.store_get(name, "kv/portal-version/applied")
            return True

        wait_for(f"agent {name}", serving, timeout=60)

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        _stop(self.agents[name].proc, sig)

    # -- reading agents ------------------------------------------------------------------------------------------
    def store_get(self, name: str, key: str, *, prefix: bool = False) -> list[store_pb2.StoreKeyValue]:
        with grpc.insecure_channel(self.agents[name].address) as ch:
            resp = store_pb2_grpc.StoreStub(ch).Get(
                store_pb2.StoreGetRequest(key=key, prefix=prefix, serializable=True), timeout=5
            )
        return list(resp.kvs)

    def store_value(self, name: str, key: str) -> dict[str, Any] | None:
        kvs = self.store_get(name, key)
        return json.loads(kvs[0].value) if kvs else None

    def applied_version(self, name: str) -> int:
        marker = self.store_value(name, "kv/portal-version/applied")
        return int(marker["version"]) if marker else 0

    def targets(self, name: str) -> list[state_pb2.TargetState]:
        with grpc.insecure_channel(self.agents[name].address) as ch:
            return list(
                state_pb2_grpc.StatePlaneStub(ch).ListTargets(state_pb2.ListTargetsRequest(), timeout=5).targets
            )

    # -- the portal ----------------------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(
        self, method: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        resp = httpx.request(
            method, f"{self.base}/api/v1/{path}", json=body,
            headers={"Authorization": f"Bearer {self.token}", **(headers or {})}, timeout=30,
        )  # fmt: skip
        assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json() if resp.content else None

    def head(self) -> int:
        return int(self.db.query("SELECT version FROM meshlink_outboxcounter WHERE id = 1")[0][0])

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")
