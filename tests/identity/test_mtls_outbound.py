"""mTLS on the mesh's outbound connections, with real processes: a router presenting its SVID to an agent with
`tls:`, both reaching an emulated runtime that requires client certificates; routers and clients without the right
certificate refused; `infermesh ctl` with the operator's certificate and bearer JWT; a Raft group over mTLS; and
rotated certificates presented on reconnect."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from jwt.algorithms import RSAAlgorithm

from agents.emulator.testing import EmulatorProcess, start_emulator
from agents.meshd.component import ComponentConfigError, build_component
from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc
from agents.raft.testing.cluster import LocalCluster
from agents.security.ca import CertificateAuthority, cert_pem
from agents.security.tls import ClientIdentity, dial_sync
from router.config import ConfigError as RouterConfigError
from router.config import parse_config as parse_router_config
from tests.agents.harness import AgentProcess, start_agent
from tests.identity.conftest import ROOT, free_port
from tests.identity.oidc_support import rsa_key
from tests.identity.test_mtls import AUDIENCE, ISSUER, TD, Creds, issue
from tests.router.procs import RouterProc, router_config, start_router

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer demo-key"}
TLS_ENV = ("INFERMESH_TLS_CA", "INFERMESH_TLS_CERT", "INFERMESH_TLS_KEY", "INFERMESH_TOKEN")


@dataclass
class Pki:
    work: Path
    ca: CertificateAuthority
    ca_file: Path
    jwks: Path
    jwt_key: Any

    def files(self, name: str, creds: Creds, ca_file: Path | None = None) -> dict[str, str]:
        """Write an identity the way `infermesh ca issue --out` does; returns {ca, cert, key} paths."""
        out = self.work / name
        out.mkdir(parents=True, exist_ok=True)
        rotate(out, creds)
        return {"ca": str(ca_file or self.ca_file), "cert": str(out / "cert.pem"), "key": str(out / "key.pem")}

    def agent_tls(self, files: dict[str, str]) -> dict[str, Any]:
        return {
            "trust_domain": TD,
            **files,
            "crl": str(self.work / "ca" / "crl.pem"),
            "crl_refresh_s": 0.2,
            "jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_file": str(self.jwks),
                "operator_values": ["mesh-ops"],
            },
        }

    def operator_jwt(self) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ops-1", "iat": now, "exp": now + 300, "groups": ["mesh-ops"]}
        return jwt.encode(claims, self.jwt_key, algorithm="RS256", headers={"kid": "k1"})


def rotate(directory: Path, creds: Creds) -> None:
    """Replace the files atomically, key first, as the agent's rotation does."""
    for name, data in (("key.pem", creds.key), ("cert.pem", creds.cert)):
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(directory / name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    work = tmp_path_factory.mktemp("mtls-out")
    ca = CertificateAuthority.init(work / "ca", TD)
    (work / "ca.pem").write_bytes(cert_pem(ca.cert))
    jwt_key = rsa_key()
    jwk = json.loads(RSAAlgorithm.to_jwk(jwt_key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    (work / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    return Pki(work, ca, work / "ca.pem", work / "jwks.json", jwt_key)


@dataclass
class Mesh:
    pki: Pki
    agent: AgentProcess
    runtime: EmulatorProcess
    router: RouterProc
    ids: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def mesh(pki: Pki) -> Iterator[Mesh]:
    other = CertificateAuthority.init(pki.work / "other-ca", TD)
    ids = {
        "agent": pki.files("agent", issue(pki.ca, "node-a", ["coordinator", "gpu"])),
        "runtime": pki.files("runtime", issue(pki.ca, "runtime-a", ["gpu"])),
        "router": pki.files("router", issue(pki.ca, "router-1", ["router"])),
        "admin": pki.files("admin", issue(pki.ca, "ops-laptop", ["admin"])),
        # trusts the mesh CA, presents a certificate from another one
        "other-ca": pki.files("other", issue(other, "router-x", ["router"])),
    }
    rt = ids["runtime"]
    runtime = start_emulator(
        "--instant",
        "--model",
        "demo-llm",
        "--tls-cert",
        rt["cert"],
        "--tls-key",
        rt["key"],
        "--tls-client-ca",
        rt["ca"],
    )
    assert runtime.url.startswith("https://127.0.0.1:")
    port = free_port()
    config = {
        "node": {"id": "node-a", "roles": ["coordinator", "gpu"], "zone": "z1"},
        "listen": {"grpc": f"127.0.0.1:{port}", "http": "127.0.0.1:0"},
        "shutdown": {"drain_s": 0, "grace_s": 0.5},
        "runtimes": [{"url": runtime.url, "flavor": "vllm"}],
        "scrape": {"interval_s": 0.5, "timeout_s": 0.4},
        "tls": pki.agent_tls(ids["agent"]),
        "raft": {
            "node_id": 1,
            "cluster_id": "mtls-out",
            "peers": {1: f"127.0.0.1:{port}"},
            "data_dir": str(pki.work / "raft"),
            "tick_ms": 50,
            "fsync": False,
        },
    }
    agent = start_agent(config, pki.work)
    router = None
    try:
        cfg = router_config([], agent={"address": agent.grpc, "tls": ids["router"]})
        router = start_router(cfg, pki.work, "router")
        yield Mesh(pki, agent, runtime, router, ids)
    finally:
        if router is not None:
            router.stop()
        agent.stop()
        runtime.stop()


def wait(pred: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def health(rp: RouterProc) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(rp.url + "/healthz", timeout=5).json()
    return doc


def chat(rp: RouterProc) -> httpx.Response:
    body = {"model": "demo-llm", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
    return httpx.post(rp.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)


def ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in TLS_ENV}
    return subprocess.run(
        [sys.executable, "-m", "meshweb.cli", "ctl", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**base, **(env or {})},
        check=False,
    )


def tls_flags(files: dict[str, str]) -> list[str]:
    return ["--ca", files["ca"], "--cert", files["cert"], "--key", files["key"]]


def test_chat_completion_through_router_agent_and_runtime_over_mtls(mesh: Mesh) -> None:
    # The agent scraped the runtime with its SVID, the router watched the agent with its own, and forwards with it.
    wait(lambda: health(mesh.router)["targets"] == {"static": 0, "agent": 1}, what="the agent's target at the router")
    assert health(mesh.router)["local_only"] is False
    resp = chat(mesh.router)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"]


def test_runtime_refuses_a_client_without_certificate(mesh: Mesh) -> None:
    ctx = ssl.create_default_context(cafile=mesh.ids["runtime"]["ca"])
    with pytest.raises(OSError):  # the runtime aborts the handshake: certificate required
        urllib.request.urlopen(mesh.runtime.url + "/health", context=ctx, timeout=5).read()
    ctx.load_cert_chain(mesh.ids["router"]["cert"], mesh.ids["router"]["key"])
    with urllib.request.urlopen(mesh.runtime.url + "/health", context=ctx, timeout=5) as resp:
        assert resp.status == 200


@pytest.mark.parametrize("who", ["none", "other-ca"])
def test_router_without_a_mesh_certificate_gets_nothing(mesh: Mesh, who: str) -> None:
    tls = {"tls": mesh.ids[who]} if who != "none" else {}
    # A static https target too: with a certificate from another CA the runtime refuses the router.
    cfg = router_config([mesh.runtime.url], agent={"address": mesh.agent.grpc, **tls})
    rp = start_router(cfg, mesh.pki.work, f"router-{who}")
    try:
        wait(lambda: health(rp)["local_only"] is True, what="local-only mode")
        assert health(rp)["targets"] == {"static": 1, "agent": 0}
        resp = chat(rp)
        assert resp.status_code == 502, resp.text
        logs = rp.logs()
        assert any("local-only" in str(e.get("msg")) and e.get("agent") == mesh.agent.grpc for e in logs)
    finally:
        rp.stop()


def test_ctl_with_the_operators_certificate_and_token(mesh: Mesh) -> None:
    admin = tls_flags(mesh.ids["admin"])
    nodes = ctl("nodes", "--agent", mesh.agent.grpc, "--json", *admin)
    assert nodes.returncode == 0, nodes.stderr
    assert [n["node_id"] for n in json.loads(nodes.stdout)] == ["node-a"]
    # Common flags may come before the verb; the certificate is checked against --server-name instead of the host.
    named = ctl("--agent", mesh.agent.grpc, *admin, "--server-name", "localhost", "store", "get", "kv/none")
    assert named.returncode == 1 and "kv/none: not found" in named.stderr

    # Without a certificate the agent refuses the handshake; ctl says what to give.
    plain = ctl("nodes", "--agent", mesh.agent.grpc, "--timeout", "3")
    assert plain.returncode == 1
    assert "cannot reach the agent" in plain.stderr and "give --ca, --cert and --key" in plain.stderr
    missing = ctl("nodes", "--agent", mesh.agent.grpc, "--ca", "/nonexistent/ca.pem", "--cert", "x", "--key", "y")
    assert missing.returncode == 2 and "--ca: cannot read /nonexistent/ca.pem" in missing.stderr
    partial = ctl("nodes", "--agent", mesh.agent.grpc, "--cert", mesh.ids["admin"]["cert"])
    assert partial.returncode == 2 and "missing --ca" in partial.stderr
    wrong_key = ctl(
        "nodes", "--agent", mesh.agent.grpc, *tls_flags({**mesh.ids["admin"], "key": mesh.ids["router"]["key"]})
    )
    assert wrong_key.returncode == 2 and "is not the private key" in wrong_key.stderr

    # Admin calls from an `admin` certificate need the operator's bearer JWT.
    put = ["store", "put", "kv/outbound", "hello", "--agent", mesh.agent.grpc]
    refused = ctl(*put, *admin)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr and "bearer JWT" in refused.stderr
    done = ctl(*put, *admin, "--token", mesh.pki.operator_jwt())
    assert done.returncode == 0 and done.stdout.startswith("OK revision"), done.stderr
    env = {
        "INFERMESH_TLS_CA": mesh.ids["admin"]["ca"],
        "INFERMESH_TLS_CERT": mesh.ids["admin"]["cert"],
        "INFERMESH_TLS_KEY": mesh.ids["admin"]["key"],
        "INFERMESH_TOKEN": mesh.pki.operator_jwt(),
    }
    got = ctl("store", "get", "kv/outbound", "--agent", mesh.agent.grpc, env=env)
    assert got.returncode == 0 and got.stdout.strip() == "hello", got.stderr
    cordon = ctl("cordon", "--agent", mesh.agent.grpc, "--reason", "test", env=env)
    assert cordon.returncode == 0 and cordon.stdout.strip() == "node-a: cordoned", cordon.stderr
    uncordon = ctl("uncordon", "--agent", mesh.agent.grpc, env=env)
    assert uncordon.returncode == 0 and uncordon.stdout.strip() == "node-a: active", uncordon.stderr


def test_router_presents_its_rotated_certificate_on_reconnect(pki: Pki, tmp_path: Path) -> None:
    old = issue(pki.ca, "router-2", ["router"])
    new = issue(pki.ca, "router-3", ["router"])
    router_files = pki.files("router-rot", old)
    config = {
        "node": {"id": "node-b", "roles": ["gpu"]},
        "listen": {"grpc": f"127.0.0.1:{free_port()}", "http": "127.0.0.1:0"},
        "shutdown": {"drain_s": 0, "grace_s": 0.2},
        "tls": pki.agent_tls(pki.files("agent-b", issue(pki.ca, "node-b", ["gpu"]))),
    }
    agent = start_agent(config, tmp_path)
    rp = start_router(router_config([], agent={"address": agent.grpc, "tls": router_files}), tmp_path, "router-rot")
    try:
        wait(lambda: health(rp)["local_only"] is False, what="the router's watch")
        # The certificate rotates and the old one is revoked: only the new one can bring the router back.
        rotate(Path(router_files["cert"]).parent, new)
        pki.ca.revoke(old.serial, "rotated")
        agent.stop()
        wait(lambda: health(rp)["local_only"] is True, what="local-only mode")
        agent = start_agent(config, tmp_path)
        wait(lambda: health(rp)["local_only"] is False, timeout=30, what="the router to reconnect with the new cert")
    finally:
        rp.stop()
        agent.stop()


def test_raft_group_over_mtls_replicates_and_follows_rotation(pki: Pki, tmp_path: Path) -> None:
    members = {i: issue(pki.ca, f"raft-{i}", ["coordinator"]) for i in (1, 2, 3)}
    files = {i: pki.files(f"raft-{i}", members[i]) for i in members}
    admin = pki.files("raft-admin", issue(pki.ca, "ops-2", ["admin"]))
    client = ClientIdentity(**admin)
    with LocalCluster(
        3, tmp_path, cluster_id="mtls-raft", fsync=False, tls={i: pki.agent_tls(f) for i, f in files.items()},
        client=client,
    ) as cluster:  # fmt: skip
        cluster.start()
        lead = cluster.leader(timeout=20)
        token = pki.operator_jwt()

        def put(node: int, value: str) -> None:
            res = ctl(
                "store", "put", "kv/raft", value, "--agent", cluster.members[node].address, "--timeout", "10",
                *tls_flags(admin), "--token", token,
            )  # fmt: skip
            assert res.returncode == 0, res.stderr

        def everywhere(value: str) -> bool:
            for m in cluster.members.values():
                with dial_sync(m.address, client) as ch:
                    req = store_pb2.StoreGetRequest(key="kv/raft", serializable=True)
                    resp = store_pb2_grpc.StoreStub(ch).Get(req, timeout=5)
                if [kv.value for kv in resp.kvs] != [value]:
                    return False
            return True

        follower = next(i for i in cluster.members if i != lead)
        put(follower, "one")  # forwarded to the leader over the members' mTLS channels
        wait(lambda: everywhere("one"), what="replication of the first value")

        # The leader's SVID rotates; once its old certificate is revoked, only channels opened with the new one
        # still reach the other members.
        rotate(Path(files[lead]["cert"]).parent, issue(pki.ca, f"raft-{lead}", ["coordinator"]))
        time.sleep(1.5)  # the members' channels look at the files at most once a second
        pki.ca.revoke(members[lead].serial, "rotated")
        old = ClientIdentity(**pki.files("raft-old", members[lead]))

        def refused_everywhere() -> bool:
            for i, m in cluster.members.items():
                if i == lead:
                    continue
                with dial_sync(m.address, old) as ch:
                    try:
                        store_pb2_grpc.RaftAdminStub(ch).Status(store_pb2.RaftStatusRequest(), timeout=5)
                    except grpc.RpcError as err:
                        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                            continue
                    return False
            return True

        wait(refused_everywhere, what="the other members to refuse the old certificate")
        put(lead, "two")
        wait(lambda: everywhere("two"), what="replication after the rotation")


def test_tls_sections_name_what_is_wrong(pki: Pki) -> None:
    files = pki.files("config-check", issue(pki.ca, "router-9", ["router"]))
    ok = parse_router_config({"agent": {"tls": files}}, env={})
    assert ok.runtime_tls() == ok.agent.tls
    with pytest.raises(RouterConfigError, match=r"agent\.tls[\s\S]*cert: no file '/nonexistent.pem'"):
        parse_router_config({"agent": {"tls": {**files, "cert": "/nonexistent.pem"}}}, env={})
    with pytest.raises(RouterConfigError, match=r"upstream_tls\.server_name: runtimes are checked against the host"):
        parse_router_config({"upstream_tls": {**files, "server_name": "x"}}, env={})
    # Raft has no TLS settings of its own: the agent's `tls:` is the one section.
    raft = {"node_id": 1, "peers": {1: "127.0.0.1:7071"}, "tls": files}
    with pytest.raises(
        ComponentConfigError, match=r"^raft: tls: Raft has no TLS settings of its own.*top-level `tls:`"
    ):
        build_component("raft", raft)


def test_http_clients_present_the_rotated_certificate(mesh: Mesh) -> None:
    # The one SSLContext of a router's or agent's HTTP client is reloaded in place: new handshakes use the new files.
    other = CertificateAuthority.init(mesh.pki.work / "other-ca-2", TD)
    files = mesh.pki.files("http-rot", issue(mesh.pki.ca, "router-5", ["router"]))
    ident = ClientIdentity(**files)
    ctx = ident.live_ssl_context()

    def health() -> int:
        with urllib.request.urlopen(mesh.runtime.url + "/health", context=ctx, timeout=5) as resp:
            return int(resp.status)

    assert health() == 200
    assert ident.refresh() is False  # nothing changed
    rotate(Path(files["cert"]).parent, issue(other, "router-5", ["router"]))
    assert ident.refresh() is True and ident.live_ssl_context() is ctx
    with pytest.raises(OSError):  # the runtime refuses the certificate from another CA
        health()
    rotate(Path(files["cert"]).parent, issue(mesh.pki.ca, "router-5", ["router"]))
    assert ident.refresh() is True
    assert health() == 200
