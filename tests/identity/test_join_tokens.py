"""Join tokens and certificates through the portal's services (in-process, on the test database): expiry, refusals
that leave the token unused, and revocation of a deleted node's certificates in the CRL."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from django.utils import timezone

from agents.security.ca import CertificateAuthority, cert_pem, load_certificate, load_crl, make_csr, new_key
from meshweb.audit.models import AuditEntry
from meshweb.fleet.models import Node, Region, Zone
from meshweb.identity import mesh
from meshweb.identity.models import IssuedCertificate, JoinToken
from meshweb.tenancy.services import SYSTEM


@pytest.fixture
def node(db: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Node:
    monkeypatch.setenv("INFERMESH_CA_DIR", str(tmp_path / "ca"))
    monkeypatch.setenv("INFERMESH_TRUST_DOMAIN", "unit.test")
    mesh._ca.cache_clear()
    zone = Zone.objects.create(region=Region.objects.create(name="r1"), name="z1")
    return Node.objects.create(name="gpu-1", address="10.0.0.5:7070", zone=zone, roles=["gpu"])


def refusals() -> list[str]:
    return [e.after["reason"] for e in AuditEntry.objects.filter(action="node.join_refused")]


def test_expired_token_is_refused_and_audited(node: Node) -> None:
    token, plaintext = mesh.join_token_create(principal=SYSTEM, node=node)
    JoinToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(mesh.EnrollmentRefused, match=f"join token {token.prefix} expired at"):
        mesh.node_enroll(token=plaintext, csr=make_csr(new_key(), "gpu-1").decode(), peer="10.0.0.5")
    assert any("expired" in r for r in refusals())
    assert JoinToken.objects.get(pk=token.pk).used_at is None


def test_bad_csr_leaves_the_token_unused(node: Node) -> None:
    token, plaintext = mesh.join_token_create(principal=SYSTEM, node=node)
    with pytest.raises(mesh.EnrollmentRefused) as err:
        mesh.node_enroll(token=plaintext, csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", peer="p")
    assert err.value.status == 400 and "certificate request" in str(err.value)
    assert JoinToken.objects.get(pk=token.pk).used_at is None
    answer = mesh.node_enroll(token=plaintext, csr=make_csr(new_key(), "gpu-1").decode(), peer="p")
    assert answer["spiffe_id"] == "spiffe://unit.test/node/gpu-1" and answer["roles"] == ["gpu"]
    cert = load_certificate(answer["certificate"])
    # The node's address is in the certificate, so peers can check the host they dialled.
    assert "10.0.0.5" in str(cert.extensions)


def test_deleting_a_node_revokes_its_certificates(node: Node) -> None:
    _, plaintext = mesh.join_token_create(principal=SYSTEM, node=node)
    answer = mesh.node_enroll(token=plaintext, csr=make_csr(new_key(), "gpu-1").decode(), peer="p")
    serial = int(answer["serial"], 16)
    mesh.node_delete(principal=SYSTEM, node=node)
    assert not Node.objects.filter(name="gpu-1").exists()
    record = IssuedCertificate.objects.get(serial=answer["serial"])
    assert record.revoked_at is not None and "deleted" in record.revoke_reason
    assert serial in load_crl(mesh.crl_pem(), mesh.portal_ca().cert)
    assert AuditEntry.objects.filter(action="certificate.revoke", object_id=str(record.pk)).exists()


def test_join_token_ttl_bounds(node: Node) -> None:
    with pytest.raises(ValueError, match="ttl"):
        mesh.join_token_create(principal=SYSTEM, node=node, ttl=timedelta(days=30))


def renewal_refusals() -> list[str]:
    return [e.after["reason"] for e in AuditEntry.objects.filter(action="node.renew_refused").order_by("id")]


def test_renewal_refuses_bad_certificates_and_signatures_with_an_audit_entry(node: Node, tmp_path: Path) -> None:
    _, plaintext = mesh.join_token_create(principal=SYSTEM, node=node)
    key = new_key()
    answer = mesh.node_enroll(token=plaintext, csr=make_csr(key, "gpu-1").decode(), peer="p")
    csr = make_csr(new_key(), "gpu-1").decode()
    good_signature = base64.b64encode(key.sign(csr.encode(), ec.ECDSA(hashes.SHA256()))).decode()
    other_ca = CertificateAuthority.init(tmp_path / "other", "unit.test")
    foreign = cert_pem(other_ca.issue(public_key=key.public_key(), node="gpu-1", roles=["gpu"])).decode()
    wrong_signature = base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode()  # a valid DER, not ours
    damaged = answer["certificate"].replace(answer["certificate"].splitlines()[5], "A" * 64)
    # Malformed input is a 400; input that reads but does not verify is a 403.
    cases = [
        ({"certificate": "not a certificate"}, "renewal refused: certificate: not a valid X.509 certificate", 400),
        ({"certificate": damaged}, "renewal refused: certificate:", 400),
        ({"certificate": foreign}, "renewal refused: certificate: not issued by the mesh CA", 403),
        ({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"}, "renewal refused: certificate request:", 400),
        ({"signature": "%%% not base64 %%%"}, "renewal refused: ", 400),
        ({"signature": wrong_signature}, "renewal refused: the signature does not verify", 403),
        ({"certificate": None}, "certificate, csr and signature are required strings", 400),
    ]
    for change, message, status in cases:
        body: dict[str, Any] = {"certificate": answer["certificate"], "csr": csr, "signature": good_signature, **change}
        before = len(renewal_refusals())
        with pytest.raises(mesh.EnrollmentRefused) as err:
            mesh.node_renew(peer="10.9.9.9", **body)
        assert message in str(err.value), (change, str(err.value))
        assert err.value.status == status, (change, err.value.status)
        assert len(renewal_refusals()) == before + 1 and renewal_refusals()[-1] == str(err.value)
    assert AuditEntry.objects.filter(action="node.renew_refused", after__peer="10.9.9.9").count() == len(cases)
    # Nothing was issued by the refused renewals; the genuine one still works.
    assert IssuedCertificate.objects.count() == 1
    renewed = mesh.node_renew(peer="p", certificate=answer["certificate"], csr=csr, signature=good_signature)
    assert renewed["spiffe_id"] == "spiffe://unit.test/node/gpu-1" and renewed["serial"] != answer["serial"]
