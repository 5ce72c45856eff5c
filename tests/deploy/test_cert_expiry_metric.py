"""The agent's SVID expiry on /metrics (the certificate-expiry alerts read it): the certificate file as it is at
scrape time, so a rotation shows at once; an unreadable file reads 0, which the alerts treat as expired."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry

from agents.security.ca import CertificateAuthority, cert_pem, key_pem, new_key
from agents.security.tls import ServerSecurity, TlsSection

METRIC = "meshd_tls_certificate_expiry_timestamp_seconds"


def _write(ca: CertificateAuthority, work: Path, ttl_s: int) -> float:
    key = new_key()
    cert = ca.issue(public_key=key.public_key(), node="gpu-1", roles=["gpu"], ttl_s=ttl_s)
    (work / "key.tmp").write_bytes(key_pem(key))
    (work / "cert.tmp").write_bytes(cert_pem(cert))
    os.replace(work / "key.tmp", work / "key.pem")
    os.replace(work / "cert.tmp", work / "cert.pem")
    return cert.not_valid_after_utc.timestamp()


def test_expiry_follows_the_certificate_file(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "mesh.test")
    (tmp_path / "ca.pem").write_bytes((tmp_path / "ca" / "ca.crt").read_bytes())
    first = _write(ca, tmp_path, ttl_s=3600)
    section = TlsSection(ca=str(tmp_path / "ca.pem"), cert=str(tmp_path / "cert.pem"),
                         key=str(tmp_path / "key.pem"), trust_domain="mesh.test")  # fmt: skip
    registry = CollectorRegistry()
    ServerSecurity(section, node="gpu-1", registry=registry)
    assert registry.get_sample_value(METRIC) == first
    rotated = _write(ca, tmp_path, ttl_s=7200)  # a rotation replaces the files
    assert rotated > first and registry.get_sample_value(METRIC) == rotated
    (tmp_path / "cert.pem").unlink()
    assert registry.get_sample_value(METRIC) == 0.0
