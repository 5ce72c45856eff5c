"""The portal link over mTLS, as real processes: `infermesh portal --mesh-bind` with INFERMESH_MESH_LINK_MTLS=required
and agents with `tls:` linked over wss://. A REST change reaches the store of an agent that dials with its SVID;
a certificate of another CA (or none) fails the TLS handshake; a revoked certificate, another node's certificate and
a link without a certificate are refused with a close code, an error frame naming the reason and an audit entry."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc
from agents.security.ca import CertificateAuthority, cert_pem, key_pem, new_key
from agents.security.tls import ClientIdentity, dial_sync
from tests.agents.harness import AgentProcess, start_agent
from tests.e2e.mesh import wait_for
from tests.meshlink.tls_portal import TD, Svid, TlsPortal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NODES = {"node-a": ["coordinator", "gpu"], "node-b": ["coordinator", "gpu"], "node-c": ["gpu"], "node-d": ["gpu"]}


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPortal]:
    p = TlsPortal(
        tmp_path_factory.mktemp("mtls-link"),
        nodes=NODES,
        revoke=["node-c"],
        env={"INFERMESH_MESH_LINK_MTLS": "required", "INFERMESH_MESH_LINK_RECHECK_S": "0.5"},
    )
    try:
        p.start()
        yield p
    finally:
        p.close()


def store_value(agent: AgentProcess, svid: Svid, key: str) -> dict[str, Any] | None:
    with dial_sync(agent.grpc, ClientIdentity(str(svid.ca), str(svid.cert), str(svid.key))) as ch:
        resp = store_pb2_grpc.StoreStub(ch).Get(store_pb2.StoreGetRequest(key=key, serializable=True), timeout=5)
    return json.loads(resp.kvs[0].value) if resp.kvs else None


def refused_link(url: str, credential: str, ctx: ssl.SSLContext | None) -> tuple[dict[str, Any], int]:
    """Open the agent socket as an agent would; return the portal's error frame and close code (it refuses before any
    hello)."""
    frame: dict[str, Any] = {}
    try:
        with connect(url, ssl=ctx, additional_headers={"Authorization": f"Bearer {credential}"}, open_timeout=10) as ws:
            frame = json.loads(ws.recv(timeout=10))
            ws.recv(timeout=10)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, closed
        return frame, closed.rcvd.code
    pytest.fail(f"the portal kept the link open after {frame}")


def plain_request(port: int, ctx: ssl.SSLContext) -> str:
    """Send an HTTP request over TLS to the mesh listener: its first line of answer, or how the connection ended. With
    TLS 1.3 the server checks the client's certificate after the client's side of the handshake, so a refusal shows
    on the first read: an alert, or the connection closed without a word."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        try:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = tls.recv(4096)
        except (ssl.SSLError, ConnectionResetError) as err:
            return f"refused: {err}"
    return data.decode(errors="replace").partition("\r\n")[0] if data else "refused: closed"


def test_rest_changes_reach_an_agent_linked_over_mtls(portal: TlsPortal, tmp_path: Path) -> None:
    svid = portal.svid("node-a")
    agent = start_agent(portal.agent_config("node-a", url=portal.wss_url, tmp=tmp_path), tmp_path)
    try:
        # The snapshot went into the agent's Raft store through its own mTLS-protected Store service.
        wait_for("the snapshot in the agent's store", lambda: store_value(agent, svid, "nodes/node-a"), timeout=60)
        status, tenant = portal.api("POST", "/api/v1/tenants/", {"slug": "globex", "name": "Globex"})
        assert status == 201, tenant
        quota = portal.get("/api/v1/quotas/?tenant__slug=globex")[1]["results"][0]
        assert portal.api("PATCH", f"/api/v1/quotas/{quota['id']}/", {"requests_per_s": 42.0})[0] == 200

        def quota_applied() -> bool:
            value = store_value(agent, svid, f"tenants/tenant-{tenant['id']}")
            return value is not None and value["limits"]["requests_per_s"] == 42.0

        wait_for("the REST change in the agent's store", quota_applied, timeout=30)
        links = portal.get("/api/v1/nodes/?name=node-a")[1]["results"]
        assert links and links[0]["name"] == "node-a"
        assert not [e for e in portal.audit("mesh.link_refused") if e["after"]["node"] == "node-a"]
    finally:
        agent.stop()


def test_a_certificate_of_another_ca_or_none_fails_the_handshake(portal: TlsPortal, tmp_path: Path) -> None:
    other = CertificateAuthority.init(tmp_path / "other-ca", TD)
    key = new_key()
    (tmp_path / "cert.pem").write_bytes(
        cert_pem(other.issue(public_key=key.public_key(), node="node-a", roles=["gpu"]))
    )
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    forged = Svid(tmp_path / "cert.pem", tmp_path / "key.pem", portal.svid("node-a").ca)
    before = len(portal.audit("mesh.link_refused"))
    # The same request with the node's own SVID is answered.
    assert plain_request(portal.mesh_port, portal.svid("node-a").ssl_context()) == "HTTP/1.1 200 OK"
    assert plain_request(portal.mesh_port, forged.ssl_context()).startswith("refused")
    bare = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(forged.ca))
    assert plain_request(portal.mesh_port, bare).startswith("refused")
    # Nothing reached the application, so nothing was audited there.
    assert len(portal.audit("mesh.link_refused")) == before


@pytest.mark.parametrize(
    ("credential_of", "svid_of", "listener", "code", "close", "reason"),
    [
        ("node-c", "node-c", "mesh", "certificate_refused", 4495, "is revoked: compromised"),
        ("node-a", "node-b", "mesh", "certificate_refused", 4495, "is not node node-a"),
        ("node-a", None, "plain", "certificate_required", 4496, "no client certificate"),
    ],
)
def test_refused_links_say_why_and_are_audited(
    portal: TlsPortal, credential_of: str, svid_of: str | None, listener: str, code: str, close: int, reason: str
) -> None:
    url = portal.wss_url if listener == "mesh" else portal.ws_url
    ctx = portal.svid(svid_of).ssl_context() if svid_of else None
    frame, close_code = refused_link(url, portal.credentials[credential_of], ctx)
    assert frame["type"] == "error" and frame["code"] == code and frame["fatal"] is True
    assert reason in frame["message"]
    assert close_code == close
    entries = [e for e in portal.audit("mesh.link_refused") if reason in e["after"]["reason"]]
    assert entries, portal.audit("mesh.link_refused")
    after = entries[0]["after"]
    assert after["node"] == credential_of and after["code"] == code and after["peer"].startswith("127.0.0.1:")
    if svid_of:
        assert after["spiffe_id"] == f"spiffe://{TD}/node/{svid_of}" and after["serial"] == portal.serials[svid_of]


def test_a_certificate_the_portal_did_not_record_is_refused(portal: TlsPortal, tmp_path: Path) -> None:
    # Signed with the portal's own CA key (as an offline `infermesh ca issue` would) but never issued by the portal:
    # the handshake accepts it, the link does not.
    ca = CertificateAuthority.load(portal.workdir / "data" / "ca")
    key = new_key()
    cert = ca.issue(public_key=key.public_key(), node="node-a", roles=["coordinator", "gpu"])
    (tmp_path / "cert.pem").write_bytes(cert_pem(cert))
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    ctx = Svid(tmp_path / "cert.pem", tmp_path / "key.pem", portal.svid("node-a").ca).ssl_context()
    frame, close_code = refused_link(portal.wss_url, portal.credentials["node-a"], ctx)
    assert frame["code"] == "certificate_refused" and close_code == 4495
    assert frame["message"].endswith("was not issued by this portal")
    serial = format(cert.serial_number, "x")
    assert [e for e in portal.audit("mesh.link_refused") if e["after"].get("serial") == serial]


def test_an_agent_on_the_plain_listener_is_refused_and_says_so(portal: TlsPortal, tmp_path: Path) -> None:
    before = len(portal.audit("mesh.link_refused"))
    agent = start_agent(portal.agent_config("node-b", url=portal.ws_url, tmp=tmp_path), tmp_path)
    try:

        def logged() -> dict[str, Any] | None:
            return next((r for r in agent.log_records() if "certificate_required" in r.get("msg", "")), None)

        record = wait_for("the agent's log of the refusal", logged, timeout=30)
        assert record["level"] == "error" and "mesh listener" in record["msg"]
        assert len(portal.audit("mesh.link_refused")) > before
    finally:
        agent.stop()


def test_revoking_a_linked_nodes_certificates_ends_its_live_link(portal: TlsPortal) -> None:
    svid = portal.svid("node-d")
    headers = {"Authorization": f"Bearer {portal.credentials['node-d']}"}
    frames: list[dict[str, Any]] = []
    close_code = 0
    with connect(portal.wss_url, ssl=svid.ssl_context(), additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", "seq": 1, "node": "node-d", "applied_version": 0, "store": "file"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        node_id = portal.get("/api/v1/nodes/?name=node-d")[1]["results"][0]["id"]
        status, body = portal.api("POST", f"/api/v1/nodes/{node_id}/revoke-certificates/", {"reason": "key leaked"})
        assert status == 200 and body == {"revoked": [portal.serials["node-d"]]}, body
        seq, deadline = 1, time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                seq += 1
                ws.send(json.dumps({"type": "heartbeat", "seq": seq, "sent_unix_ms": int(time.time() * 1000)}))
                with contextlib.suppress(TimeoutError):
                    frames.append(json.loads(ws.recv(timeout=0.3)))
        except ConnectionClosed as closed:
            close_code = closed.rcvd.code if closed.rcvd is not None else -1
    assert close_code == 4495, (close_code, frames[-3:])
    errors = [f for f in frames if f["type"] == "error"]
    assert errors and errors[-1]["code"] == "certificate_refused" and "is revoked: key leaked" in errors[-1]["message"]
    entries = [e for e in portal.audit("mesh.link_refused") if e["after"].get("serial") == portal.serials["node-d"]]
    assert entries and "is revoked: key leaked" in entries[0]["after"]["reason"]
    # The revocation itself is audited under the admin's name.
    assert [e for e in portal.audit("certificate.revoke") if e["after"]["reason"] == "key leaked"]


@pytest.mark.parametrize(
    ("credential", "reason"),
    [("imn_short", "malformed node credential"), ("imn_000000000000_wrong", "unknown node credential 000000000000")],
)
def test_a_bad_node_credential_is_refused_at_the_handshake_and_audited(
    portal: TlsPortal, credential: str, reason: str
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(portal.ws_url, additional_headers={"Authorization": f"Bearer {credential}"}, open_timeout=10)
    assert refused.value.response.status_code == 403
    entries = [e for e in portal.audit("identity.bearer_refused") if e["after"]["scheme"] == "node_credential"]
    assert [e for e in entries if e["after"]["reason"] == reason], entries
    assert not [e for e in entries if credential in json.dumps(e)]  # the credential itself is never written
