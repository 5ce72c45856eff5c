"""The portal's side of mesh identity: its CA (agents.security.ca, a Django-free library), join tokens, enrollment,
renewal and revocation. Every write is audited; refusals are audited too, outside the refused transaction."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import exceptions

from agents.security.ca import (
    MAX_TTL_S,
    CaError,
    CaPassphraseError,
    CertificateAuthority,
    cert_pem,
    key_pem,
    load_certificate,
    load_csr,
    new_key,
    read_passphrase_file,
    svid_info,
    verify_issued_by,
)
from meshweb.audit.services import audit_record
from meshweb.fleet.models import Node
from meshweb.identity.models import IssuedCertificate, JoinToken
from meshweb.tenancy.rbac import Principal
from meshweb.tenancy.scoped.writes import object_delete

JOIN_PREFIX = "imj_"
SVID_TTL_S = int(os.environ.get("INFERMESH_SVID_TTL_S", "3600"))

log = logging.getLogger("meshweb.identity")


class EnrollmentRefused(Exception):
    """A join or renewal was refused; the message is safe to show to the caller. `status` is 400 for malformed
    input, 403 for a well-formed request that is not honoured."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


@lru_cache(maxsize=1)
def _ca(directory: str, trust_domain: str, passphrase: bytes | None) -> CertificateAuthority:
    return CertificateAuthority.open(directory, trust_domain, passphrase)


def ca_passphrase() -> bytes | None:
    """The CA key's passphrase: INFERMESH_CA_PASSPHRASE, or the first line of INFERMESH_CA_PASSPHRASE_FILE (a
    mounted secret). None leaves a new CA's key unencrypted and loads an existing unencrypted one with a warning."""
    value = os.environ.get("INFERMESH_CA_PASSPHRASE", "")
    if value:
        return value.encode()
    file = os.environ.get("INFERMESH_CA_PASSPHRASE_FILE", "")
    return read_passphrase_file(file, "INFERMESH_CA_PASSPHRASE_FILE") if file else None


class CaUnavailable(exceptions.APIException):
    """The portal's own CA cannot be used (its key's passphrase is missing or wrong, its files are damaged): a
    fault of the portal's configuration, never of the caller, so 503 and the details only in the portal's log."""

    status_code = 503
    default_code = "ca_unavailable"
    default_detail = "The mesh CA is unavailable; see the portal's log."


def _ca_location() -> tuple[str, str]:
    return (
        os.environ.get("INFERMESH_CA_DIR") or str(settings.DATA_DIR / "ca"),
        os.environ.get("INFERMESH_TRUST_DOMAIN", "infermesh.local"),
    )


def portal_ca_problem() -> str | None:
    """Checked when the portal starts: why an existing CA cannot be loaded (a missing or wrong passphrase, damaged
    files), so a misconfigured portal stops at once instead of answering 503 on the first enrollment."""
    directory, trust_domain = _ca_location()
    if not (Path(directory) / "ca.key").exists():
        return None  # created on first use
    try:
        _ca(directory, trust_domain, ca_passphrase())
    except CaPassphraseError as err:
        return f"the mesh CA in {directory} cannot be loaded: {err} (set INFERMESH_CA_PASSPHRASE or _FILE)"
    except (CaError, OSError) as err:
        return f"the mesh CA in {directory} cannot be loaded: {err}"
    return None


def portal_ca() -> CertificateAuthority:
    directory, trust_domain = _ca_location()
    try:
        return _ca(directory, trust_domain, ca_passphrase())
    except CaPassphraseError as err:
        log.error("the portal's CA cannot be loaded: %s (set INFERMESH_CA_PASSPHRASE or _FILE)", err)
        raise CaUnavailable() from None
    except (CaError, OSError) as err:
        log.error("the portal's CA cannot be loaded: %s", err)
        raise CaUnavailable() from None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_join_token(raw: Any) -> tuple[str, str]:
    if not isinstance(raw, str) or not raw.startswith(JOIN_PREFIX):
        raise EnrollmentRefused("malformed join token: expected imj_<prefix>_<secret>", 400)
    prefix, sep, secret = raw[len(JOIN_PREFIX) :].partition("_")
    if not sep or len(prefix) != 12 or not all(c in "0123456789abcdef" for c in prefix) or len(secret) < 20:
        raise EnrollmentRefused("malformed join token: expected imj_<prefix>_<secret>", 400)
    return prefix, secret


@transaction.atomic
def join_token_create(
    *, principal: Principal, node: Node, ttl: timedelta = timedelta(minutes=15)
) -> tuple[JoinToken, str]:
    if not timedelta(minutes=1) <= ttl <= timedelta(days=7):
        raise ValueError("ttl must be between 1 minute and 7 days")
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    token = JoinToken(node=node, prefix=prefix, secret_hash=_hash(secret), expires_at=timezone.now() + ttl)
    token.full_clean()
    token.save()
    audit_record(
        actor=principal.name,
        action="jointoken.create",
        obj=token,
        tenant_id=None,
        after={"node": node.name, "prefix": prefix, "expires_at": token.expires_at.isoformat()},
    )
    return token, f"{JOIN_PREFIX}{prefix}_{secret}"


@transaction.atomic
def _refusal(action: str, reason: str, peer: str, obj: Any = None) -> None:
    audit_record(
        actor=f"peer:{peer}"[:200],
        action=action,
        obj=obj if obj is not None else JoinToken(),
        tenant_id=None,
        after={"reason": reason, "peer": peer},
    )


def _issue(node: Node, csr_pem: str, *, hosts: list[str]) -> tuple[x509.Certificate, IssuedCertificate]:
    ca = portal_ca()
    cert = ca.issue_for_csr(csr_pem, node=node.name, roles=list(node.roles), ttl_s=SVID_TTL_S, hosts=hosts)
    info = svid_info(cert)
    record = IssuedCertificate.objects.create(
        node_name=node.name,
        serial=format(info.serial, "x"),
        spiffe_id=info.spiffe_id,
        roles=list(info.roles),
        not_after=info.not_after,
    )
    return cert, record


def _answer(cert: x509.Certificate) -> dict[str, Any]:
    ca = portal_ca()
    info = svid_info(cert)
    return {
        "certificate": cert_pem(cert).decode(),
        "ca": cert_pem(ca.cert).decode(),
        "trust_domain": ca.trust_domain,
        "spiffe_id": info.spiffe_id,
        "roles": list(info.roles),
        "serial": format(info.serial, "x"),
        "not_after": info.not_after.isoformat(),
    }


def _hosts(node: Node, extra: list[str]) -> list[str]:
    host = node.address.rpartition(":")[0].strip("[]")
    return sorted({h for h in [host, "127.0.0.1", "localhost", *extra] if h})


def node_enroll(*, token: Any, csr: Any, peer: str, hosts: list[str] | None = None) -> dict[str, Any]:
    """Exchange a one-time join token and a CSR for the node's first SVID."""
    try:
        prefix, secret = split_join_token(token)
        if not isinstance(csr, str):
            raise EnrollmentRefused("csr: a PEM certificate request is required", 400)
        with transaction.atomic():
            row = JoinToken.objects.select_for_update().select_related("node").filter(prefix=prefix).first()
            if row is None or not hmac.compare_digest(_hash(secret), row.secret_hash):
                raise EnrollmentRefused("unknown join token")
            if row.used_at is not None:
                raise EnrollmentRefused(f"join token {prefix} was already used at {row.used_at.isoformat()}")
            if row.expires_at <= timezone.now():
                raise EnrollmentRefused(f"join token {prefix} expired at {row.expires_at.isoformat()}")
            try:
                cert, record = _issue(row.node, csr, hosts=_hosts(row.node, hosts or []))
            except CaError as err:
                raise EnrollmentRefused(str(err), 400) from None
            row.used_at = timezone.now()
            row.used_by = peer[:255]
            row.certificate_serial = record.serial
            row.save(update_fields=["used_at", "used_by", "certificate_serial", "updated_at"])
            audit_record(
                actor=f"node:{row.node.name}",
                action="node.enroll",
                obj=record,
                tenant_id=None,
                after={"spiffe_id": record.spiffe_id, "serial": record.serial, "join_token": prefix, "peer": peer},
            )
            return _answer(cert)
    except EnrollmentRefused as err:
        _refusal("node.join_refused", str(err), peer)
        raise


def node_renew(*, certificate: Any, csr: Any, signature: Any, peer: str) -> dict[str, Any]:
    """A new SVID for a node that proves it holds a current one: `signature` is the CSR (PEM bytes) signed with the
    current key (ECDSA SHA-256, base64)."""
    try:
        if not all(isinstance(v, str) for v in (certificate, csr, signature)):
            raise EnrollmentRefused("certificate, csr and signature are required strings", 400)
        ca = portal_ca()
        try:  # what cannot be read is malformed input (400); what reads but does not verify is refused (403)
            current = load_certificate(certificate)
            info = svid_info(current)
            load_csr(csr)
            raw_signature = base64.b64decode(signature, validate=True)
            key = current.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise CaError("certificate: not an ECDSA key")
        except (CaError, ValueError) as err:
            raise EnrollmentRefused(f"renewal refused: {err}", 400) from None
        try:
            verify_issued_by(current, ca.cert)
            key.verify(raw_signature, csr.encode(), ec.ECDSA(hashes.SHA256()))
        except (CaError, ValueError, InvalidSignature) as err:
            raise EnrollmentRefused(f"renewal refused: {str(err) or 'the signature does not verify'}") from None
        with transaction.atomic():
            record = IssuedCertificate.objects.filter(serial=format(info.serial, "x")).first()
            if record is None or record.revoked_at is not None:
                raise EnrollmentRefused("renewal refused: the certificate is revoked or unknown")
            node = Node.objects.filter(name=info.node).first()
            if node is None:
                raise EnrollmentRefused(f"renewal refused: node {info.node} no longer exists")
            cert, new_record = _issue(node, csr, hosts=_hosts(node, []))
            audit_record(
                actor=f"node:{node.name}",
                action="node.renew",
                obj=new_record,
                tenant_id=None,
                after={"serial": new_record.serial, "previous": record.serial},
            )
            return _answer(cert)
    except EnrollmentRefused as err:
        _refusal("node.renew_refused", str(err), peer)
        raise


@transaction.atomic
def node_certificates_revoke(*, principal: Principal, node_name: str, reason: str) -> list[str]:
    """Revoke every unrevoked SVID of a node (published at once in the CRL)."""
    ca = portal_ca()
    serials = []
    for record in IssuedCertificate.objects.select_for_update().filter(node_name=node_name, revoked_at__isnull=True):
        record.revoked_at = timezone.now()
        record.revoke_reason = reason[:200]
        record.save(update_fields=["revoked_at", "revoke_reason", "updated_at"])
        ca.revoke(int(record.serial, 16), reason)
        serials.append(record.serial)
        audit_record(
            actor=principal.name, action="certificate.revoke", obj=record, tenant_id=None, after={"reason": reason}
        )
    return serials


@transaction.atomic
def node_delete(*, principal: Principal, node: Node) -> None:
    """Delete a node and revoke its certificates, in one transaction."""
    node_certificates_revoke(principal=principal, node_name=node.name, reason=f"node {node.name} deleted")
    object_delete(principal=principal, obj=node)


def crl_pem() -> bytes:
    return portal_ca().crl_pem()


# -- the portal's own server certificate -------------------------------------------------------------------------
PORTAL_SERVICE = "portal"  # SPIFFE ID spiffe://<trust-domain>/portal: not a node, so never an agent's identity


def _write_private(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


def _current_portal_certificate(path: Path, ca: CertificateAuthority, hosts: list[str], ttl_s: int) -> bool:
    """Whether the certificate in `path` may be served on: issued by this CA, for these hosts, with more than half
    of its lifetime left."""
    try:
        cert = load_certificate(path.read_bytes())
        verify_issued_by(cert, ca.cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, CaError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    want = {str(ipaddress.ip_address(h)) if _is_ip(h) else h for h in hosts}
    left = (cert.not_valid_after_utc - timezone.now()).total_seconds()
    return have == want and left > ttl_s / 2


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def portal_server_certificate(*, directory: Path, hosts: list[str], ttl_s: int) -> tuple[Path, Path, Path]:
    """The mesh listener's certificate, key and the mesh CA in `directory` (cert.pem, key.pem, ca.pem): the one there
    while it is current, else a new one from the portal's CA (recorded and audited like the SVIDs). Call it again to
    renew: it reissues once less than half of the lifetime is left."""
    if not 60 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"INFERMESH_PORTAL_CERT_TTL_S: must be between 60 and {MAX_TTL_S}, got {ttl_s}")
    for host in hosts:
        if not _is_ip(host) and not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host):
            raise ValueError(
                f"mesh host {host!r} (--mesh-host, INFERMESH_MESH_HOSTS): neither an IP address nor a DNS name"
            )
    ca = portal_ca()
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file, ca_file = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    _write_private(ca_file, cert_pem(ca.cert))
    if _current_portal_certificate(cert_file, ca, hosts, ttl_s) and key_file.is_file():
        return cert_file, key_file, ca_file
    key = new_key()
    cert = ca.issue_service(public_key=key.public_key(), service=PORTAL_SERVICE, hosts=hosts, ttl_s=ttl_s)
    spiffe_id = f"spiffe://{ca.trust_domain}/{PORTAL_SERVICE}"
    with transaction.atomic():
        record = IssuedCertificate.objects.create(
            node_name="",
            serial=format(cert.serial_number, "x"),
            spiffe_id=spiffe_id,
            roles=[],
            not_after=cert.not_valid_after_utc,
        )
        audit_record(
            actor="system:portal",
            action="certificate.issue",
            obj=record,
            tenant_id=None,
            after={"spiffe_id": spiffe_id, "serial": record.serial, "hosts": hosts},
        )
    # The key first: a listener that reloads between the two writes finds a mismatched pair and tries again later.
    _write_private(key_file, key_pem(key), 0o600)
    _write_private(cert_file, cert_pem(cert))
    return cert_file, key_file, ca_file
