"""Node enrollment against a real portal process: a one-time join token from the API, `infermesh join`, reuse and
malformed tokens refused with clear errors and audit entries; an agent serving with the joined SVID rotates it
before expiry, and deleting a node revokes its certificates at every agent that fetches the portal's CRL."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agents.security.ca import load_certificate, parse_svid
from tests.agents.harness import AgentProcess, start_agent
from tests.identity.conftest import ROOT, Portal, free_port

pytestmark = pytest.mark.e2e


def make_node(portal: Portal, name: str, roles: list[str], address: str = "127.0.0.1:7070") -> int:
    admin = portal.admin_token
    if portal.api("/api/v1/regions/?name=r-enroll", admin)[1]["count"] == 0:
        assert portal.api("/api/v1/regions/", admin, "POST", {"name": "r-enroll"})[0] == 201
        assert portal.api("/api/v1/zones/", admin, "POST", {"name": "z-enroll", "region": "r-enroll"})[0] == 201
    status, body = portal.api(
        "/api/v1/nodes/", admin, "POST", {"name": name, "address": address, "zone": "z-enroll", "roles": roles}
    )
    assert status == 201, body
    return int(body["id"])


def join_token(portal: Portal, node: str) -> str:
    status, body = portal.api("/api/v1/join-tokens/", portal.admin_token, "POST", {"node": node, "ttl_s": 600})
    assert status == 201, body
    token: str = body["token"]
    return token


def join(portal: Portal, token: str, node: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshweb.cli", "join", "--portal", portal.url, "--token", token, "--node", node,
         "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def audit(portal: Portal, action: str) -> list[dict[str, Any]]:
    status, body = portal.api(f"/api/v1/audit/?action={action}&limit=200", portal.admin_token)
    assert status == 200
    return list(body["results"])


def test_join_token_is_one_time_and_refusals_are_audited(oidc_portal: Portal, tmp_path: Path) -> None:
    portal = oidc_portal
    make_node(portal, "enroll-1", ["gpu", "trainer"])
    token = join_token(portal, "enroll-1")
    first = join(portal, token, "enroll-1", tmp_path / "a")
    assert first.returncode == 0, first.stderr
    info = parse_svid((tmp_path / "a" / "cert.pem").read_bytes())
    assert info.spiffe_id == "spiffe://mesh.test/node/enroll-1"
    assert info.roles == ("gpu", "trainer")
    assert (tmp_path / "a" / "key.pem").stat().st_mode & 0o777 == 0o600
    lifetime = (info.not_after - info.not_before).total_seconds()
    assert 120 <= lifetime <= 200  # short-lived (the portal's INFERMESH_SVID_TTL_S) plus clock-skew margin

    again = join(portal, token, "enroll-1", tmp_path / "b")
    assert again.returncode == 1
    assert f"join token {token.split('_')[1]} was already used" in again.stderr
    bad = join(portal, "imj_nothex_short", "enroll-1", tmp_path / "c")
    assert bad.returncode == 1 and "malformed join token" in bad.stderr
    unknown = join(portal, "imj_0123456789ab_" + "x" * 40, "enroll-1", tmp_path / "d")
    assert unknown.returncode == 1 and "unknown join token" in unknown.stderr
    reasons = [e["after"]["reason"] for e in audit(portal, "node.join_refused")]
    assert any("already used" in r for r in reasons)
    assert any("malformed" in r for r in reasons)
    assert any("unknown join token" in r for r in reasons)
    assert [e for e in audit(portal, "node.enroll") if e["after"]["spiffe_id"] == info.spiffe_id]


def test_only_platform_admins_create_join_tokens(oidc_portal: Portal) -> None:
    portal = oidc_portal
    portal.set_mapping([{"claim": "groups", "value": "acme-ops", "tenant": "acme", "role": "operator"}])
    robot = portal.provider.client_credentials_token("robot-acme")
    status, body = portal.api("/api/v1/join-tokens/", robot, "POST", {"node": "enroll-1"})
    assert status == 403, body
    status, body = portal.api("/api/v1/join-tokens/", portal.admin_token, "POST", {"node": "no-such-node"})
    assert status == 400 and "node" in body["error"]["fields"]


def server_serial(address: str, cert: Path, key: Path, ca: Path) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return int(load_certificate(der).serial_number)


@pytest.fixture
def enrolled_agent(oidc_portal: Portal, tmp_path: Path) -> Iterator[tuple[AgentProcess, Path]]:
    portal = oidc_portal
    port = free_port()
    make_node(portal, "enroll-agent", ["coordinator", "gpu"], address=f"127.0.0.1:{port}")
    result = join(portal, join_token(portal, "enroll-agent"), "enroll-agent", tmp_path / "svid")
    assert result.returncode == 0, result.stderr
    svid = tmp_path / "svid"
    config = {
        "node": {"id": "enroll-agent", "roles": ["coordinator", "gpu"]},
        "listen": {"grpc": f"127.0.0.1:{port}", "http": "127.0.0.1:0"},
        "tls": {
            "trust_domain": "mesh.test",
            "ca": str(svid / "ca.pem"),
            "cert": str(svid / "cert.pem"),
            "key": str(svid / "key.pem"),
            "crl_url": f"{portal.url}/mesh/crl.pem",
            "crl_refresh_s": 0.3,
            "rotation": {"portal": portal.url, "renew_fraction": 0.98, "check_s": 0.3},
        },
    }
    agent = start_agent(config, tmp_path)
    try:
        yield agent, svid
    finally:
        agent.stop()


def test_agent_rotates_its_svid_and_honours_node_deletion(
    oidc_portal: Portal, enrolled_agent: tuple[AgentProcess, Path], tmp_path: Path
) -> None:
    portal = oidc_portal
    agent, svid = enrolled_agent
    first = parse_svid((svid / "cert.pem").read_bytes()).serial

    # A client node enrolls too and may call the agent.
    client_id = make_node(portal, "enroll-client", ["router"])
    assert join(portal, join_token(portal, "enroll-client"), "enroll-client", tmp_path / "client").returncode == 0
    client = tmp_path / "client"

    # Rotation: with 98% of the lifetime as the renewal point the agent renews within a few seconds.
    deadline = time.monotonic() + 30
    while parse_svid((svid / "cert.pem").read_bytes()).serial == first:
        assert time.monotonic() < deadline, "the agent did not rotate its SVID: " + "\n".join(list(agent.lines)[-20:])
        time.sleep(0.2)
    rotated = parse_svid((svid / "cert.pem").read_bytes()).serial
    # New handshakes get the rotated certificate (the agent's file may rotate again meanwhile: any newer one).
    assert server_serial(agent.grpc, client / "cert.pem", client / "key.pem", client / "ca.pem") != first
    assert [e for e in audit(portal, "node.renew") if e["after"]["serial"] == format(rotated, "x")]

    creds = grpc.ssl_channel_credentials(
        (client / "ca.pem").read_bytes(), (client / "key.pem").read_bytes(), (client / "cert.pem").read_bytes()
    )

    def list_nodes() -> grpc.StatusCode:
        with grpc.secure_channel(agent.grpc, creds) as ch:
            rpc = ch.unary_unary(
                "/infermesh.v1.Control/ListNodes", request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            try:
                rpc(b"", timeout=10)
            except grpc.RpcError as err:
                return err.code()
            return grpc.StatusCode.OK

    assert list_nodes() == grpc.StatusCode.OK
    # Deleting the node in the portal revokes its certificates; the agent fetches the CRL and refuses it.
    assert portal.api(f"/api/v1/nodes/{client_id}/", portal.admin_token, "DELETE")[0] == 204
    deadline = time.monotonic() + 15
    while list_nodes() == grpc.StatusCode.OK:
        assert time.monotonic() < deadline, "the agent kept accepting a deleted node's certificate"
        time.sleep(0.2)
    assert list_nodes() == grpc.StatusCode.UNAUTHENTICATED
    assert [e for e in audit(portal, "certificate.revoke") if "enroll-client" in e["after"]["reason"]]
