"""A portal process with its mesh listener (`infermesh portal --mesh-bind`) on a fresh PostgreSQL database, seeded
with nodes, their link credentials and SVIDs issued by the portal's own CA (through the join service), for the tests
of the mTLS portal link and of refused-call reports."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.mesh import Database, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
INFERMESH = [sys.executable, "-m", "meshweb.cli"]
TD = "mesh.test"

SEED = """
import json, os, sys
from pathlib import Path
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshweb.settings")
import django
django.setup()
from agents.security.ca import key_pem, make_csr, new_key
from meshweb.tenancy.scoped.writes import object_create
from meshweb.fleet.models import Node, Region, Zone
from meshweb.identity.mesh import join_token_create, node_certificates_revoke, node_enroll
from meshweb.identity.credentials import node_credential_issue
from meshweb.tenancy.services import SYSTEM, tenant_create, token_create
spec = json.loads(sys.argv[1])
out_dir = Path(spec["out"])
region = object_create(principal=SYSTEM, model=Region, data={"name": "region-1"})
zone = object_create(principal=SYSTEM, model=Zone, data={"name": "zone-a", "region": region})
out = {"credentials": {}, "serials": {}}
for name, roles in spec["nodes"].items():
    node = object_create(principal=SYSTEM, model=Node,
                         data={"name": name, "address": "127.0.0.1:1", "zone": zone, "roles": roles})
    out["credentials"][name] = node_credential_issue(principal=SYSTEM, node=node)[1]
    key = new_key()
    _, token = join_token_create(principal=SYSTEM, node=node)
    answer = node_enroll(token=token, csr=make_csr(key, name).decode(), peer="seed")
    d = out_dir / name
    d.mkdir(parents=True)
    (d / "cert.pem").write_text(answer["certificate"])
    (d / "key.pem").write_bytes(key_pem(key))
    (d / "ca.pem").write_text(answer["ca"])
    out["serials"][name] = answer["serial"]
for name in spec["revoke"]:
    node_certificates_revoke(principal=SYSTEM, node_name=name, reason="compromised")
tenant = tenant_create(principal=SYSTEM, slug="ops")
out["token"] = token_create(principal=SYSTEM, tenant=tenant, role="platform_admin", name="tls")[1]
print(json.dumps(out))
"""


@dataclass
class Svid:
    cert: Path
    key: Path
    ca: Path

    def ssl_context(self, ca: Path | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca or self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


class TlsPortal:
    def __init__(self, workdir: Path, *, nodes: dict[str, list[str]], revoke: list[str], env: dict[str, str]) -> None:
        self.workdir = workdir
        self.db = Database()
        self.port = free_port()
        self.mesh_port = free_port()
        self.env = {
            k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
        } | {
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": self.db.url,
            "INFERMESH_DATA_DIR": str(workdir / "data"),
            "INFERMESH_TRUST_DOMAIN": TD,
            "INFERMESH_DB_POOL_SIZE": "4",
            "INFERMESH_OUTBOX_POLL_S": "0.5",
            "INFERMESH_AGENT_HEARTBEAT_S": "1",
            "INFERMESH_AGENT_TELEMETRY_S": "1",
            **env,
        }
        self.nodes = nodes
        self.revoke = revoke
        self.credentials: dict[str, str] = {}
        self.serials: dict[str, str] = {}
        self.token = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "portal.log"

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        done = subprocess.run(
            [*INFERMESH, "manage", "migrate", "--no-input", "--verbosity", "0"],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        spec = {"nodes": self.nodes, "revoke": self.revoke, "out": str(self.workdir / "svids")}
        seed = subprocess.run(
            [sys.executable, "-c", SEED, json.dumps(spec)],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert seed.returncode == 0, seed.stderr[-3000:]
        out = json.loads(seed.stdout.strip().splitlines()[-1])
        self.credentials, self.serials, self.token = out["credentials"], out["serials"], out["token"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*INFERMESH, "portal", "--no-migrate", "--bind", f"127.0.0.1:{self.port}",
                 "--mesh-bind", f"127.0.0.1:{self.mesh_port}"],
                cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            with socket.create_connection(("127.0.0.1", self.mesh_port), timeout=1):
                pass
            return self.get("/healthz")[0] == 200

        wait_for("the portal and its mesh listener", up, timeout=60)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.db.drop()

    # -- material ------------------------------------------------------------------------------------------------
    def svid(self, node: str) -> Svid:
        d = self.workdir / "svids" / node
        return Svid(d / "cert.pem", d / "key.pem", d / "ca.pem")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/agent/"

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.mesh_port}/ws/agent/"

    def agent_config(
        self, node: str, *, url: str, tmp: Path, svid: Svid | None = None, **portal: Any
    ) -> dict[str, Any]:
        """An agent of `node` with `tls:` (its SVID, the portal's CRL), a single-member Raft group as its store and
        the portal link at `url`."""
        s = svid or self.svid(node)
        grpc_port = free_port()
        return {
            "node": {"id": node, "roles": self.nodes[node], "zone": "zone-a"},
            "listen": {"grpc": f"127.0.0.1:{grpc_port}", "http": "127.0.0.1:0"},
            "shutdown": {"drain_s": 0, "grace_s": 0.5},
            "tls": {
                "trust_domain": TD,
                "ca": str(s.ca),
                "cert": str(s.cert),
                "key": str(s.key),
                "crl_url": f"http://127.0.0.1:{self.port}/mesh/crl.pem",
                "crl_refresh_s": 0.3,
            },
            "raft": {"node_id": 1, "cluster_id": f"tls-{node}", "peers": {1: f"127.0.0.1:{grpc_port}"},
                     "data_dir": str(tmp / f"raft-{node}"), "tick_ms": 50, "fsync": False},
            "portal": {"url": url, "credential": self.credentials[node], "reconnect_max_s": 1.0, **portal},
        }  # fmt: skip

    # -- REST ----------------------------------------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, Any]:
        return self.api("GET", path)

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode(errors="replace")

    def audit(self, action: str) -> list[dict[str, Any]]:
        status, body = self.get(f"/api/v1/audit/?action={action}&limit=500")
        assert status == 200, body
        return list(body["results"])


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric_name, _, rest = head.partition("{")
        if metric_name != name:
            continue
        got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p))
        if got == want:
            return float(value)
    return 0.0
