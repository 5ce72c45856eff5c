"""Refused gRPC calls on a real agent with `tls:` and a portal link: each one raises
`meshd_authz_refusals_total{service,method,code}` on the agent's /metrics, writes one JSON line on the `meshd.audit`
logger, and reaches the portal's audit log over the link as `mesh.call_refused` (node, caller, method, reason); a
flood of refusals arrives as a few counted entries, not one frame per call."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from agents.security.ca import CertificateAuthority, cert_pem, key_pem, new_key
from agents.security.tls import ClientIdentity, dial_sync
from tests.agents.harness import AgentProcess, start_agent
from tests.e2e.mesh import wait_for
from tests.meshlink.tls_portal import TD, TlsPortal, metric

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NODES = {"node-a": ["coordinator", "gpu"], "router-1": ["router"], "gpu-2": ["gpu"], "gpu-3": ["gpu"]}
PUT = "/infermesh.v1.Store/Put"
LIST_NODES = "/infermesh.v1.Control/ListNodes"
VOTE = "/infermesh.v1.Raft/RequestVote"


@dataclass
class Mesh:
    portal: TlsPortal
    agent: AgentProcess

    def call(self, who: str, method: str) -> tuple[grpc.StatusCode, str]:
        s = self.portal.svid(who)
        with dial_sync(self.agent.grpc, ClientIdentity(str(s.ca), str(s.cert), str(s.key))) as ch:
            rpc = ch.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            try:
                rpc(b"", timeout=10)
            except grpc.RpcError as err:
                return err.code(), err.details() or ""
        return grpc.StatusCode.OK, ""

    def metrics(self) -> str:
        return httpx.get(f"http://{self.agent.http}/metrics", timeout=5).text

    def refusals(self, method: str, code: str) -> float:
        service, _, name = method.lstrip("/").partition("/")
        return metric(self.metrics(), "meshd_authz_refusals_total", service=service, method=name, code=code)

    def audited(self, method: str, caller: str) -> list[dict[str, Any]]:
        return [
            e["after"]
            for e in self.portal.audit("mesh.call_refused")
            if e["after"].get("method") == method and e["after"].get("caller") == caller
        ]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("refusals")
    portal = TlsPortal(work, nodes=NODES, revoke=[], env={})
    try:
        portal.start()
        config = portal.agent_config("node-a", url=portal.wss_url, tmp=work, refusal_report_s=0.3)
        agent = start_agent(config, work)
        try:
            m = Mesh(portal, agent)
            wait_for("the agent's portal link", lambda: "meshd_portal_connected 1.0" in m.metrics(), timeout=60)
            yield m
        finally:
            agent.stop()
    finally:
        portal.close()


def spiffe(node: str) -> str:
    return f"spiffe://{TD}/node/{node}"


def test_a_call_outside_the_callers_role_is_counted_logged_and_audited(mesh: Mesh) -> None:
    code, details = mesh.call("router-1", PUT)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "may not call" in details
    assert mesh.refusals(PUT, "PERMISSION_DENIED") == 1.0
    lines = [r for r in mesh.agent.log_records() if r.get("logger") == "meshd.audit"]
    assert lines and lines[-1]["audit"] == "mesh.call_refused"
    assert lines[-1]["caller"] == spiffe("router-1") and lines[-1]["method"] == PUT
    assert lines[-1]["code"] == "PERMISSION_DENIED" and lines[-1]["reason"] == details
    entries = wait_for("the refusal in the portal's audit log", lambda: mesh.audited(PUT, spiffe("router-1")))
    assert entries[0]["node"] == "node-a" and entries[0]["reason"] == details and entries[0]["count"] == 1
    assert entries[0]["code"] == "PERMISSION_DENIED" and entries[0]["peer"].startswith("ipv4:127.0.0.1:")
    # Allowed calls are not counted.
    assert mesh.call("router-1", LIST_NODES)[0] == grpc.StatusCode.OK
    assert mesh.refusals(LIST_NODES, "PERMISSION_DENIED") == 0.0


def test_a_revoked_caller_is_refused_counted_and_audited(mesh: Mesh) -> None:
    assert mesh.call("gpu-2", LIST_NODES)[0] == grpc.StatusCode.OK
    node = mesh.portal.get("/api/v1/nodes/?name=gpu-2")[1]["results"][0]
    assert mesh.portal.api("DELETE", f"/api/v1/nodes/{node['id']}/")[0] == 204  # revokes its certificates
    wait_for("the agent to apply the new CRL", lambda: mesh.call("gpu-2", LIST_NODES)[0] != grpc.StatusCode.OK)
    code, details = mesh.call("gpu-2", LIST_NODES)
    assert code == grpc.StatusCode.UNAUTHENTICATED and details.endswith("is revoked")
    assert mesh.refusals(LIST_NODES, "UNAUTHENTICATED") >= 2.0
    entries = wait_for("the revoked caller in the audit log", lambda: mesh.audited(LIST_NODES, spiffe("gpu-2")))
    assert all(e["node"] == "node-a" and e["reason"].endswith("is revoked") for e in entries)


def test_a_flood_of_refusals_arrives_as_a_few_counted_entries(mesh: Mesh) -> None:
    calls = 300
    s = mesh.portal.svid("gpu-3")
    with dial_sync(mesh.agent.grpc, ClientIdentity(str(s.ca), str(s.cert), str(s.key))) as ch:
        rpc = ch.unary_unary(VOTE, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for _ in range(calls):
            with pytest.raises(grpc.RpcError) as err:
                rpc(b"", timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert mesh.refusals(VOTE, "PERMISSION_DENIED") == calls

    def all_reported() -> list[dict[str, Any]] | None:
        entries = mesh.audited(VOTE, spiffe("gpu-3"))
        return entries if sum(e["count"] for e in entries) == calls else None

    entries = wait_for("every refused vote in the audit log", all_reported)
    # One entry per report window, not per call.
    assert len(entries) < calls / 10, len(entries)
    assert all(e["first_at"] <= e["last_at"] for e in entries)


def test_a_handshake_refusal_is_only_seen_as_a_handshake(mesh: Mesh, tmp_path: Path) -> None:
    # gRPC refuses another CA's certificate inside its TLS stack: no refusal reaches Python, only the handshake count.
    other = CertificateAuthority.init(tmp_path / "other-ca", TD)
    key = new_key()
    (tmp_path / "cert.pem").write_bytes(cert_pem(other.issue(public_key=key.public_key(), node="gpu-3", roles=["gpu"])))
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    identity = ClientIdentity(str(mesh.portal.svid("gpu-3").ca), str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    before = mesh.metrics()
    with dial_sync(mesh.agent.grpc, identity) as ch:
        rpc = ch.unary_unary(LIST_NODES, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            rpc(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    after = mesh.metrics()
    assert metric(after, "meshd_tls_handshakes_total") > metric(before, "meshd_tls_handshakes_total")
    refused = [line for line in after.splitlines() if line.startswith("meshd_authz_refusals_total{")]
    assert refused == [line for line in before.splitlines() if line.startswith("meshd_authz_refusals_total{")]
