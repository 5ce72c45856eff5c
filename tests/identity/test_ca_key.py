"""The mesh CA's key at rest: encrypted under a passphrase by `infermesh ca init`, loaded with it for issue, revoke
and crl, refused with exit 2 and a clear message when the passphrase is missing or wrong; older unencrypted keys
still load (with a warning) and can be encrypted in place; the portal's CA takes INFERMESH_CA_PASSPHRASE."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from agents.security.ca import (
    CaError,
    CaPassphraseError,
    CertificateAuthority,
    load_crl,
    make_csr,
    new_key,
    parse_svid,
)
from meshweb.fleet.models import Node, Region, Zone
from meshweb.identity import mesh
from meshweb.identity.models import JoinToken
from meshweb.tenancy.services import SYSTEM
from tests.identity.conftest import ROOT, free_port

PASS = b"correct horse battery staple"
ENCRYPTED = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


def ca_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshweb.cli", "ca", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_library_round_trip_and_refusals(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "key.test", passphrase=PASS)
    key_file = tmp_path / "ca" / "ca.key"
    assert key_file.read_bytes().startswith(ENCRYPTED)
    assert key_file.stat().st_mode & 0o777 == 0o600
    loaded = CertificateAuthority.load(tmp_path / "ca", PASS)
    cert = loaded.issue(public_key=new_key().public_key(), node="n1", roles=["gpu"])
    cert.verify_directly_issued_by(ca.cert)
    with pytest.raises(CaPassphraseError, match=r"ca\.key: wrong passphrase"):
        CertificateAuthority.load(tmp_path / "ca", b"not it")
    with pytest.raises(CaPassphraseError, match=r"ca\.key is encrypted and no passphrase was given"):
        CertificateAuthority.load(tmp_path / "ca")
    # An unusable passphrase stops init before anything is written.
    with pytest.raises(CaPassphraseError, match="empty"):
        CertificateAuthority.init(tmp_path / "empty", "key.test", passphrase=b"")
    assert not (tmp_path / "empty").exists()


def test_unencrypted_key_loads_with_a_warning_and_can_be_encrypted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    CertificateAuthority.init(tmp_path / "ca", "key.test")
    with caplog.at_level(logging.WARNING, logger="agents.security.ca"):
        ca = CertificateAuthority.load(tmp_path / "ca")
    assert "stored unencrypted" in caplog.text
    ca.save_key(PASS)
    key_file = tmp_path / "ca" / "ca.key"
    assert key_file.read_bytes().startswith(ENCRYPTED) and key_file.stat().st_mode & 0o777 == 0o600
    assert CertificateAuthority.load(tmp_path / "ca", PASS).key.private_numbers() == ca.key.private_numbers()
    with pytest.raises(CaPassphraseError):
        CertificateAuthority.load(tmp_path / "ca")


def test_key_of_another_ca_is_refused(tmp_path: Path) -> None:
    CertificateAuthority.init(tmp_path / "a", "key.test", passphrase=PASS)
    CertificateAuthority.init(tmp_path / "b", "key.test", passphrase=PASS)
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(CaError, match=r"ca\.key does not belong to ca\.crt"):
        CertificateAuthority.load(tmp_path / "a", PASS)


def test_cli_encrypts_and_needs_the_passphrase(tmp_path: Path) -> None:
    ca_dir = str(tmp_path / "ca")
    env = {"CA_PASS": PASS.decode()}
    result = ca_cli("init", "--dir", ca_dir, "--trust-domain", "cli.test", "--passphrase-env", "CA_PASS", env=env)
    assert result.returncode == 0, result.stderr
    assert "ca.key encrypted" in result.stdout
    assert (tmp_path / "ca" / "ca.key").read_bytes().startswith(ENCRYPTED)
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600

    out = str(tmp_path / "node")
    issue = ["issue", "--dir", ca_dir, "--node", "n1", "--role", "gpu", "--out", out]
    missing = ca_cli(*issue)
    assert missing.returncode == 2
    assert "ca.key is encrypted and no passphrase was given (pass --passphrase-env VAR" in missing.stderr
    wrong = ca_cli(*issue, "--passphrase-env", "CA_PASS", env={"CA_PASS": "guess"})
    assert wrong.returncode == 2 and "wrong passphrase" in wrong.stderr
    unset = ca_cli(*issue, "--passphrase-env", "NO_SUCH_VARIABLE_SET")
    assert unset.returncode == 2 and "--passphrase-env NO_SUCH_VARIABLE_SET: the variable is not set" in unset.stderr
    assert not (tmp_path / "node").exists()

    # A passphrase file (a mounted secret): its trailing newline is not part of the passphrase.
    pass_file = tmp_path / "ca.pass"
    pass_file.write_text(PASS.decode() + "\n")
    issued = ca_cli(*issue, "--passphrase-file", str(pass_file))
    assert issued.returncode == 0, issued.stderr
    serial = parse_svid((tmp_path / "node" / "cert.pem").read_bytes()).serial
    revoked = ca_cli("revoke", "--dir", ca_dir, "--serial", f"{serial:x}", "--passphrase-env", "CA_PASS", env=env)
    assert revoked.returncode == 0, revoked.stderr
    crl = ca_cli("crl", "--dir", ca_dir, "--passphrase-file", str(pass_file))
    assert crl.returncode == 0, crl.stderr
    assert serial in load_crl(crl.stdout.encode(), CertificateAuthority.load(ca_dir, PASS).cert)
    assert ca_cli("crl", "--dir", ca_dir).returncode == 2
    missing_file = ca_cli("crl", "--dir", ca_dir, "--passphrase-file", str(tmp_path / "nope"))
    assert missing_file.returncode == 2 and "No such file" in missing_file.stderr


def test_cli_encrypts_an_existing_unencrypted_ca(tmp_path: Path) -> None:
    ca_dir = str(tmp_path / "ca")
    init = ca_cli("init", "--dir", ca_dir, "--trust-domain", "cli.test")
    assert init.returncode == 0 and "UNENCRYPTED" in init.stdout
    issue = ["issue", "--dir", ca_dir, "--node", "n1", "--out", str(tmp_path / "node")]
    plain = ca_cli(*issue)
    assert plain.returncode == 0 and "stored unencrypted" in plain.stderr
    rekey = ca_cli("passphrase", "--dir", ca_dir, "--new-passphrase-env", "NEW", env={"NEW": "s3cret-phrase"})
    assert rekey.returncode == 0, rekey.stderr
    assert ca_cli(*issue).returncode == 2
    assert ca_cli(*issue, "--passphrase-env", "P", env={"P": "s3cret-phrase"}).returncode == 0
    # Changing it needs the current one.
    again = ca_cli("passphrase", "--dir", ca_dir, "--new-passphrase-env", "NEW", env={"NEW": "other"})
    assert again.returncode == 2 and "no passphrase was given" in again.stderr


@pytest.fixture
def portal_ca_env(db: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("INFERMESH_CA_DIR", str(tmp_path / "portal-ca"))
    monkeypatch.setenv("INFERMESH_TRUST_DOMAIN", "portal.test")
    monkeypatch.setenv("INFERMESH_CA_PASSPHRASE", PASS.decode())
    mesh._ca.cache_clear()
    yield tmp_path / "portal-ca"
    mesh._ca.cache_clear()


def test_portal_ca_is_encrypted_with_its_passphrase(portal_ca_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zone = Zone.objects.create(region=Region.objects.create(name="r1"), name="z1")
    node = Node.objects.create(name="gpu-1", address="10.0.0.5:7070", zone=zone, roles=["gpu"])
    _, plaintext = mesh.join_token_create(principal=SYSTEM, node=node)
    answer = mesh.node_enroll(token=plaintext, csr=make_csr(new_key(), "gpu-1").decode(), peer="p")
    assert answer["spiffe_id"] == "spiffe://portal.test/node/gpu-1"
    assert (portal_ca_env / "ca.key").read_bytes().startswith(ENCRYPTED)
    assert CertificateAuthority.load(portal_ca_env, PASS).cert == mesh.portal_ca().cert

    # The passphrase from a file instead (a mounted secret).
    pass_file = portal_ca_env.parent / "ca.pass"
    pass_file.write_text(PASS.decode() + "\n")
    monkeypatch.delenv("INFERMESH_CA_PASSPHRASE")
    monkeypatch.setenv("INFERMESH_CA_PASSPHRASE_FILE", str(pass_file))
    mesh._ca.cache_clear()
    assert mesh.portal_ca().cert == CertificateAuthority.load(portal_ca_env, PASS).cert


@pytest.mark.parametrize("passphrase", ["wrong passphrase", ""])
def test_portal_with_a_wrong_or_missing_passphrase_answers_503_and_spends_no_token(
    portal_ca_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, passphrase: str
) -> None:
    mesh.portal_ca()  # created encrypted under the right passphrase
    zone = Zone.objects.create(region=Region.objects.create(name="r1"), name="z1")
    node = Node.objects.create(name="gpu-1", address="10.0.0.5:7070", zone=zone, roles=["gpu"])
    token, plaintext = mesh.join_token_create(principal=SYSTEM, node=node)
    monkeypatch.setenv("INFERMESH_CA_PASSPHRASE", passphrase)
    mesh._ca.cache_clear()
    client = APIClient()
    body = {"token": plaintext, "csr": make_csr(new_key(), "gpu-1").decode()}
    with caplog.at_level(logging.ERROR, logger="meshweb.identity"):
        resp = client.post("/api/v1/enroll/", body, format="json")
    assert resp.status_code == 503, resp.content
    assert resp.json()["error"]["code"] == "ca_unavailable"
    assert PASS.decode() not in resp.content.decode()
    reason = "wrong passphrase" if passphrase else "no passphrase was given"
    assert reason in caplog.text and "INFERMESH_CA_PASSPHRASE" in caplog.text
    assert JoinToken.objects.get(pk=token.pk).used_at is None
    crl = client.get("/mesh/crl.pem")
    assert crl.status_code == 503 and b"CA is unavailable" in crl.content


def test_portal_stops_at_start_when_its_ca_key_cannot_be_loaded(tmp_path: Path) -> None:
    env = {"CA_PASS": PASS.decode()}
    created = ca_cli("init", "--dir", str(tmp_path / "ca"), "--trust-domain", "portal.test", "--passphrase-env",
                     "CA_PASS", env=env)  # fmt: skip
    assert created.returncode == 0, created.stderr
    base = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "INFERMESH_CA_PASSPHRASE"}}
    base |= {"INFERMESH_DATA_DIR": str(tmp_path / "data"), "INFERMESH_CA_DIR": str(tmp_path / "ca"),
             "INFERMESH_TRUST_DOMAIN": "portal.test"}  # fmt: skip
    for extra, words in (({}, "passphrase"), ({"INFERMESH_CA_PASSPHRASE": "wrong"}, "passphrase")):
        done = subprocess.run(
            [sys.executable, "-m", "meshweb.cli", "portal", "--bind", f"127.0.0.1:{free_port()}"],
            cwd=ROOT, env=base | extra, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, (extra, done.stdout, done.stderr)
        assert "the mesh CA in" in done.stderr and words in done.stderr, done.stderr
