"""The rule on an agent link's client certificate (meshlink.services, in-process on the test database): an SVID the
portal issued to the node whose credential opened the link, unrevoked and current; none at all only while mTLS is
optional. Also the refused-call reports recorded as audit entries, and the ASGI TLS extension of a real TLS socket."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from agents.proto.portal_link import CallRefusals
from agents.security.ca import CertificateAuthority, cert_pem, key_pem, make_csr, new_key
from meshweb.audit.models import AuditEntry
from meshweb.fleet.models import Node, Region, Zone
from meshweb.identity import mesh
from meshweb.meshlink import services
from meshweb.meshlink.listener import tls_extension
from meshweb.meshlink.models import NodeLink
from meshweb.tenancy.services import SYSTEM


@pytest.fixture
def nodes(db: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Node]:
    monkeypatch.setenv("INFERMESH_CA_DIR", str(tmp_path / "ca"))
    monkeypatch.setenv("INFERMESH_TRUST_DOMAIN", "unit.test")
    mesh._ca.cache_clear()
    zone = Zone.objects.create(region=Region.objects.create(name="r1"), name="z1")
    return {n: Node.objects.create(name=n, address="10.0.0.5:7070", zone=zone, roles=["gpu"]) for n in ("n1", "n2")}


def svid(node: Node) -> str:
    _, token = mesh.join_token_create(principal=SYSTEM, node=node)
    return str(mesh.node_enroll(token=token, csr=make_csr(new_key(), node.name).decode(), peer="p")["certificate"])


def test_the_nodes_own_current_svid_passes(nodes: dict[str, Node]) -> None:
    assert services.link_certificate_check(node=nodes["n1"], chain=[svid(nodes["n1"])]) is None


def test_another_nodes_svid_is_refused(nodes: dict[str, Node]) -> None:
    refusal = services.link_certificate_check(node=nodes["n1"], chain=[svid(nodes["n2"])])
    assert refusal is not None and refusal.code == services.CERTIFICATE_REFUSED
    assert refusal.reason == "spiffe://unit.test/node/n2 is not node n1, whose credential opened this link"


def test_a_revoked_svid_is_refused(nodes: dict[str, Node]) -> None:
    pem = svid(nodes["n1"])
    mesh.node_certificates_revoke(principal=SYSTEM, node_name="n1", reason="lost laptop")
    refusal = services.link_certificate_check(node=nodes["n1"], chain=[pem])
    assert refusal is not None and refusal.reason.endswith("is revoked: lost laptop")


def test_an_expired_or_unrecorded_certificate_is_refused(nodes: dict[str, Node]) -> None:
    ca = mesh.portal_ca()
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    expired = ca.issue(public_key=new_key().public_key(), node="n1", roles=["gpu"], ttl_s=60, now=old)
    refusal = services.link_certificate_check(node=nodes["n1"], chain=[cert_pem(expired).decode()])
    assert refusal is not None and "outside its validity" in refusal.reason
    unrecorded = ca.issue(public_key=new_key().public_key(), node="n1", roles=["gpu"])
    refusal = services.link_certificate_check(node=nodes["n1"], chain=[cert_pem(unrecorded).decode()])
    assert refusal is not None and refusal.reason.endswith("was not issued by this portal")


def test_a_certificate_of_another_ca_or_garbage_is_refused(nodes: dict[str, Node], tmp_path: Path) -> None:
    other = CertificateAuthority.init(tmp_path / "other", "unit.test")
    cert = other.issue(public_key=new_key().public_key(), node="n1", roles=["gpu"])
    refusal = services.link_certificate_check(node=nodes["n1"], chain=[cert_pem(cert).decode()])
    assert refusal is not None and "not issued by the mesh CA" in refusal.reason
    refusal = services.link_certificate_check(node=nodes["n1"], chain=["-----BEGIN CERTIFICATE-----\nAAAA\n"])
    assert refusal is not None and refusal.reason.startswith("client certificate: ")


def test_no_certificate_is_refused_only_when_required(nodes: dict[str, Node]) -> None:
    assert services.link_certificate_check(node=nodes["n1"], chain=[]) is None
    with override_settings(INFERMESH_MESH_LINK_MTLS="required"):
        refusal = services.link_certificate_check(node=nodes["n1"], chain=[])
    assert refusal is not None and refusal.code == services.CERTIFICATE_REQUIRED


def test_a_refusal_is_audited_and_counted(nodes: dict[str, Node]) -> None:
    refusal = services.link_certificate_check(node=nodes["n1"], chain=[svid(nodes["n2"])])
    assert refusal is not None
    entry = services.link_refusal_record(node=nodes["n1"], refusal=refusal, peer="10.0.0.9:4000")
    assert entry.action == "mesh.link_refused" and entry.actor == "peer:10.0.0.9:4000"
    assert entry.after == {
        "node": "n1", "code": "certificate_refused", "reason": refusal.reason, "peer": "10.0.0.9:4000",
        "spiffe_id": "spiffe://unit.test/node/n2", "serial": refusal.serial,
    }  # fmt: skip
    assert NodeLink.objects.get(node=nodes["n1"]).refused == 1


def test_refused_call_reports_become_audit_entries(nodes: dict[str, Node]) -> None:
    report = CallRefusals.model_validate(
        {"seq": 3, "dropped": 7, "refusals": [
            {"caller": "spiffe://unit.test/node/r1", "peer": "ipv4:10.0.0.7:5000", "method": "/infermesh.v1.Store/Put",
             "code": "PERMISSION_DENIED", "reason": "may not call", "count": 40, "first_unix_ms": 1, "last_unix_ms": 2},
        ]}
    )  # fmt: skip
    services.call_refusals_record(node=nodes["n2"], report=report)
    entries = list(AuditEntry.objects.filter(action="mesh.call_refused").order_by("id"))
    assert [e.actor for e in entries] == ["node:n2", "node:n2"]
    first, dropped = entries[0].after, entries[1].after
    assert first is not None and dropped is not None
    assert first["node"] == "n2" and first["caller"] == "spiffe://unit.test/node/r1" and first["count"] == 40
    assert first["method"] == "/infermesh.v1.Store/Put" and first["reason"] == "may not call"
    assert dropped["count"] == 7 and "not itemised" in dropped["reason"]


def test_tls_extension_of_a_real_connection(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "unit.test")
    files = {}
    for name in ("server", "client"):
        key = new_key()
        cert = ca.issue(public_key=key.public_key(), node=name, roles=["gpu"])
        (tmp_path / f"{name}.pem").write_bytes(cert_pem(cert))
        (tmp_path / f"{name}.key").write_bytes(key_pem(key))
        files[name] = cert
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(tmp_path / "ca" / "ca.crt")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.crt"))
    client_ctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    listener = socket.create_server(("127.0.0.1", 0))
    got: dict[str, Any] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            got.update(tls_extension(tls) or {})
            tls.sendall(b"x")

    thread = threading.Thread(target=serve)
    thread.start()
    raw = socket.create_connection(listener.getsockname())
    with raw, client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.recv(1)
    thread.join(10)
    listener.close()
    assert got["client_cert_chain"] == [cert_pem(files["client"]).decode()]
    assert "CN=client" in got["client_cert_name"] and got["tls_version"] in (0x0303, 0x0304)
    assert tls_extension(None) is None


def test_the_mesh_listener_certificate_is_issued_kept_and_renewed(nodes: dict[str, Node], tmp_path: Path) -> None:
    from agents.security.ca import load_certificate
    from meshweb.identity.models import IssuedCertificate

    where = tmp_path / "listener"
    cert, key, ca = mesh.portal_server_certificate(directory=where, hosts=["127.0.0.1", "portal.test"], ttl_s=120)
    first = load_certificate(cert.read_bytes())
    san = str(first.extensions)
    assert "spiffe://unit.test/portal" in san and "portal.test" in san and "127.0.0.1" in san
    assert key.stat().st_mode & 0o777 == 0o600 and ca.read_bytes() == cert_pem(mesh.portal_ca().cert)
    record = IssuedCertificate.objects.get(serial=format(first.serial_number, "x"))
    assert record.spiffe_id == "spiffe://unit.test/portal" and record.node_name == ""
    assert AuditEntry.objects.filter(action="certificate.issue", object_id=str(record.pk)).exists()
    # Current and for the same hosts: kept (a restart serves the same certificate).
    mesh.portal_server_certificate(directory=where, hosts=["127.0.0.1", "portal.test"], ttl_s=120)
    assert load_certificate(cert.read_bytes()).serial_number == first.serial_number
    # Less than half of the lifetime left (here: a longer lifetime wanted), or other hosts: reissued.
    mesh.portal_server_certificate(directory=where, hosts=["127.0.0.1", "portal.test"], ttl_s=600)
    second = load_certificate(cert.read_bytes()).serial_number
    assert second != first.serial_number
    mesh.portal_server_certificate(directory=where, hosts=["127.0.0.1"], ttl_s=600)
    assert load_certificate(cert.read_bytes()).serial_number != second
    with pytest.raises(ValueError, match="INFERMESH_PORTAL_CERT_TTL_S"):
        mesh.portal_server_certificate(directory=where, hosts=["127.0.0.1"], ttl_s=5)
    with pytest.raises(ValueError, match="mesh host 'bad host'"):
        mesh.portal_server_certificate(directory=where, hosts=["bad host"], ttl_s=600)
