"""mTLS on every gRPC service of a real agent: certificates from another CA, expired, revoked or missing are
refused by every service; valid certificates are authorized by SPIFFE ID and role; admin calls need an operator's
bearer JWT."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from jwt.algorithms import RSAAlgorithm

from agents.proto.infermesh.v1 import control_pb2
from agents.security.ca import CertificateAuthority, cert_pem, key_pem, new_key
from tests.agents.harness import AgentProcess, start_agent
from tests.identity.conftest import free_port
from tests.identity.oidc_support import rsa_key

pytestmark = pytest.mark.e2e

TD = "mesh.test"
ISSUER = "https://idp.mesh.test"
AUDIENCE = "infermesh-mesh"
# One method per service, called with an empty message: every one must be refused before it runs.
PROBES = {
    "infermesh.v1.StatePlane": "ListTargets",
    "infermesh.v1.Scoring": "ScoreTargets",
    "infermesh.v1.Control": "ListNodes",
    "infermesh.v1.Raft": "RequestVote",
    "infermesh.v1.Store": "Get",
    "infermesh.v1.RaftAdmin": "Status",
    "grpc.health.v1.Health": "Check",
}


@dataclass
class Creds:
    cert: bytes
    key: bytes
    serial: int = 0


@dataclass
class Mesh:
    agent: AgentProcess
    ca: CertificateAuthority
    ca_pem: bytes
    creds: dict[str, Creds]
    crl: Path
    jwt_key: Any

    def channel(self, who: str | None) -> grpc.Channel:
        c = self.creds.get(who) if who else None
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=c.key if c else None,
            certificate_chain=c.cert if c else None,
        )
        return grpc.secure_channel(self.agent.grpc, creds)

    def call(self, who: str | None, method: str, request: bytes = b"", token: str | None = None) -> grpc.StatusCode:
        with self.channel(who) as ch:
            rpc = ch.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            md = [("authorization", f"Bearer {token}")] if token else None
            try:
                rpc(request, timeout=10, metadata=md)
            except grpc.RpcError as err:
                self.last_details = err.details() or ""
                return err.code()
            self.last_details = ""
            return grpc.StatusCode.OK

    def operator_jwt(self, **over: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ops-1", "iat": now, "exp": now + 300, "groups": ["mesh-ops"]}
        claims.update(over)
        return jwt.encode(claims, self.jwt_key, algorithm="RS256", headers={"kid": "k1"})


def issue(ca: CertificateAuthority, node: str, roles: list[str], **kw: Any) -> Creds:
    key = new_key()
    cert = ca.issue(public_key=key.public_key(), node=node, roles=roles, **kw)
    return Creds(cert_pem(cert), key_pem(key), cert.serial_number)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("mtls")
    ca = CertificateAuthority.init(work / "ca", TD)
    other = CertificateAuthority.init(work / "other-ca", TD)
    creds = {
        "server": issue(ca, "node-a", ["coordinator", "gpu"]),
        "self": issue(ca, "node-a", ["gpu"]),
        "router": issue(ca, "router-1", ["router"]),
        "gpu": issue(ca, "gpu-2", ["gpu"]),
        "coordinator": issue(ca, "coord-2", ["coordinator"]),
        "admin": issue(ca, "ops-laptop", ["admin"]),
        "revoked": issue(ca, "gpu-3", ["coordinator"]),
        "late-revoked": issue(ca, "gpu-4", ["coordinator"]),
        "expired": issue(ca, "gpu-5", ["coordinator"], ttl_s=60, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)),
        "other-ca": issue(other, "node-x", ["coordinator"]),
    }
    ca.revoke(creds["revoked"].serial, "test")
    server = work / "server"
    server.mkdir()
    (server / "cert.pem").write_bytes(creds["server"].cert)
    (server / "key.pem").write_bytes(creds["server"].key)
    (server / "ca.pem").write_bytes(cert_pem(ca.cert))
    jwt_key = rsa_key()
    jwk = json.loads(RSAAlgorithm.to_jwk(jwt_key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    (work / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    port = free_port()
    config = {
        "node": {"id": "node-a", "roles": ["coordinator", "gpu"], "zone": "z1"},
        "listen": {"grpc": f"127.0.0.1:{port}", "http": "127.0.0.1:0"},
        "tls": {
            "trust_domain": TD,
            "ca": str(server / "ca.pem"),
            "cert": str(server / "cert.pem"),
            "key": str(server / "key.pem"),
            "crl": str(work / "ca" / "crl.pem"),
            "crl_refresh_s": 0.2,
            "jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_file": str(work / "jwks.json"),
                "operator_values": ["mesh-ops"],
            },
        },
        "raft": {
            "node_id": 1,
            "cluster_id": "mtls-test",
            "peers": {1: f"127.0.0.1:{port}"},
            "data_dir": str(work / "raft"),
            "tick_ms": 50,
            "fsync": False,
        },
    }
    agent = start_agent(config, work)
    try:
        yield Mesh(agent, ca, cert_pem(ca.cert), creds, work / "ca" / "crl.pem", jwt_key)
    finally:
        agent.stop()


def test_every_served_service_is_probed(mesh: Mesh) -> None:
    with mesh.channel("coordinator") as ch:
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
    assert set(PROBES) <= services
    # Reflection and membership-like extras are covered by the generic probe below.
    assert services - set(PROBES) <= {"grpc.reflection.v1alpha.ServerReflection", "infermesh.v1.Membership"}


@pytest.mark.parametrize("who", ["other-ca", "expired", None])
def test_bad_certificates_are_refused_by_every_service(mesh: Mesh, who: str | None) -> None:
    for service, method in [*PROBES.items(), ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo")]:
        code = mesh.call(who, f"/{service}/{method}")
        # The TLS handshake fails: the client never reaches the service.
        assert code == grpc.StatusCode.UNAVAILABLE, (who, service, code, mesh.last_details)


def test_revoked_certificate_is_refused_by_every_service(mesh: Mesh) -> None:
    for service, method in [*PROBES.items(), ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo")]:
        code = mesh.call("revoked", f"/{service}/{method}")
        assert code == grpc.StatusCode.UNAUTHENTICATED, (service, code)
        assert "revoked" in mesh.last_details


def test_revocation_published_later_takes_effect(mesh: Mesh) -> None:
    assert mesh.call("late-revoked", "/infermesh.v1.Control/ListNodes") == grpc.StatusCode.OK
    mesh.ca.revoke(mesh.creds["late-revoked"].serial, "node deleted")
    deadline = time.monotonic() + 15
    while mesh.call("late-revoked", "/infermesh.v1.Control/ListNodes") == grpc.StatusCode.OK:
        assert time.monotonic() < deadline, "the agent did not pick up the new CRL"
        time.sleep(0.2)
    assert mesh.last_details.endswith("is revoked")


def test_roles_are_enforced(mesh: Mesh) -> None:
    denied = grpc.StatusCode.PERMISSION_DENIED
    ok = grpc.StatusCode.OK
    push = "/infermesh.v1.StatePlane/PushModelState"
    list_targets = "/infermesh.v1.StatePlane/ListTargets"
    # Only the node's own processes push state; routers and coordinators read it; other GPU nodes do neither.
    assert mesh.call("router", push) == denied
    assert "may not call" in mesh.last_details and "router-1" in mesh.last_details
    assert mesh.call("self", push) == ok
    assert mesh.call("router", list_targets) == ok
    assert mesh.call("gpu", list_targets) == denied
    # Only coordinators take part in Raft and write the store.
    assert mesh.call("gpu", "/infermesh.v1.Raft/RequestVote") == denied
    assert mesh.call("router", "/infermesh.v1.Store/Put") == denied
    assert mesh.call("router", "/infermesh.v1.RaftAdmin/TransferLeader") == denied
    # Scoring: routers yes, other GPU nodes no.
    # (an empty request is a bad one: the service itself answers, so authorization let it through)
    assert mesh.call("router", "/infermesh.v1.Scoring/ScoreTargets") == grpc.StatusCode.INVALID_ARGUMENT
    assert mesh.call("gpu", "/infermesh.v1.Scoring/ReportOutcome") == denied
    # Drain / cordon: the node itself or a coordinator, not a router.
    cordon = "/infermesh.v1.Control/Cordon"
    body = control_pb2.NodeActionRequest(reason="test").SerializeToString()
    assert mesh.call("router", cordon, body) == denied
    assert mesh.call("coordinator", cordon, body) == ok
    assert mesh.call("self", "/infermesh.v1.Control/Uncordon", b"") == ok


def test_admin_calls_need_an_operators_jwt(mesh: Mesh) -> None:
    denied = grpc.StatusCode.PERMISSION_DENIED
    cordon = "/infermesh.v1.Control/Cordon"
    uncordon = "/infermesh.v1.Control/Uncordon"
    body = control_pb2.NodeActionRequest(reason="maintenance").SerializeToString()
    assert mesh.call("admin", cordon, body) == denied
    assert "bearer JWT" in mesh.last_details and "no `authorization: Bearer`" in mesh.last_details
    assert mesh.call("admin", cordon, body, token=mesh.operator_jwt(groups=["viewers"])) == denied
    assert "grants no mesh operation" in mesh.last_details
    assert mesh.call("admin", cordon, body, token=mesh.operator_jwt(exp=int(time.time()) - 60)) == denied
    assert "expired" in mesh.last_details
    assert mesh.call("admin", cordon, body, token=mesh.operator_jwt(aud="other")) == denied
    assert "audience" in mesh.last_details
    forged = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60, "groups": ["mesh-ops"]},
        rsa_key(),
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    assert mesh.call("admin", cordon, body, token=forged) == denied
    assert "signature" in mesh.last_details
    assert mesh.call("admin", cordon, body, token=mesh.operator_jwt()) == grpc.StatusCode.OK
    assert mesh.call("admin", uncordon, b"", token=mesh.operator_jwt()) == grpc.StatusCode.OK
    # Reads need no JWT.
    assert mesh.call("admin", "/infermesh.v1.Control/ListNodes") == grpc.StatusCode.OK
