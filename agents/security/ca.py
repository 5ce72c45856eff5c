"""The mesh certificate authority: a root (offline via `infermesh ca`, or run by the portal) issuing short-lived
X.509 SVIDs with SPIFFE IDs `spiffe://<trust-domain>/node/<name>`, the node's roles as subject OUs, and a CRL.

Everything here is pure `cryptography`; no Django, no gRPC. Parsers refuse malformed input with a CaError that
names the problem.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("router", "trainer", "coordinator", "gpu", "edge", "adapter", "admin")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?$")
_NODE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
MAX_TTL_S = 30 * 86400
MAX_PEM_BYTES = 64 * 1024
_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"

log = logging.getLogger("agents.security.ca")


class CaError(ValueError):
    """Bad certificate material or request; the message names what is wrong."""


class CaPassphraseError(CaError):
    """The CA key is encrypted and its passphrase is missing or wrong (or a passphrase is unusable)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_trust_domain(value: str) -> str:
    if not isinstance(value, str) or not _TRUST_DOMAIN.match(value):
        raise CaError(f"trust domain {value!r}: use lower-case letters, digits, '.' and '-'")
    return value


def check_node_name(value: str) -> str:
    if not isinstance(value, str) or not _NODE.match(value):
        raise CaError(f"node name {value!r}: use lower-case letters, digits, '.' and '-' (at most 63)")
    return value


def check_roles(roles: Iterable[str]) -> list[str]:
    out = sorted(set(roles))
    unknown = [r for r in out if r not in ROLES]
    if unknown:
        raise CaError(f"unknown role {unknown[0]!r}; choose from {', '.join(ROLES)}")
    return out


def spiffe_id_for(trust_domain: str, node: str) -> str:
    return f"spiffe://{check_trust_domain(trust_domain)}/node/{check_node_name(node)}"


@dataclass(frozen=True)
class SvidInfo:
    spiffe_id: str
    trust_domain: str
    node: str
    roles: tuple[str, ...]
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime

    def has_role(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)


def parse_spiffe_id(uri: str) -> tuple[str, str]:
    """(trust domain, node name) of `spiffe://<td>/node/<name>`."""
    if not isinstance(uri, str) or not uri.startswith("spiffe://"):
        raise CaError(f"SPIFFE ID {uri!r}: must start with spiffe://")
    rest = uri[len("spiffe://") :]
    td, sep, path = rest.partition("/")
    if not sep or not path.startswith("node/"):
        raise CaError(f"SPIFFE ID {uri!r}: expected spiffe://<trust-domain>/node/<name>")
    return check_trust_domain(td), check_node_name(path[len("node/") :])


def load_certificate(data: bytes | str) -> x509.Certificate:
    raw = data.encode() if isinstance(data, str) else data
    if not raw or len(raw) > MAX_PEM_BYTES:
        raise CaError("certificate: empty or larger than 64 KiB")
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except (ValueError, TypeError, KeyError, x509.InvalidVersion) as err:
        raise CaError(f"certificate: not a valid X.509 certificate ({err})") from None


def svid_info(cert: x509.Certificate) -> SvidInfo:
    """SPIFFE ID, node and roles of an SVID; CaError when it is not one of ours in shape."""
    try:
        return _svid_info(cert)
    except CaError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as err:
        # cryptography parses some fields lazily: a damaged one surfaces only when it is read.
        raise CaError(f"certificate: malformed ({type(err).__name__}: {err})") from None


def _svid_info(cert: x509.Certificate) -> SvidInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CaError("certificate: no subjectAltName, so no SPIFFE ID") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise CaError(f"certificate: expected exactly one SPIFFE ID URI SAN, found {len(uris)}")
    td, node = parse_spiffe_id(uris[0])
    ous = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    roles = tuple(check_roles(ous))
    return SvidInfo(
        spiffe_id=uris[0],
        trust_domain=td,
        node=node,
        roles=roles,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def parse_svid(data: bytes | str) -> SvidInfo:
    return svid_info(load_certificate(data))


def load_csr(data: bytes | str) -> x509.CertificateSigningRequest:
    raw = data.encode() if isinstance(data, str) else data
    if not raw or len(raw) > MAX_PEM_BYTES:
        raise CaError("certificate request: empty or larger than 64 KiB")
    try:
        csr = x509.load_pem_x509_csr(raw)
    except (ValueError, TypeError) as err:
        raise CaError(f"certificate request: not a valid PEM CSR ({err})") from None
    if not csr.is_signature_valid:
        raise CaError("certificate request: its signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in {"secp256r1", "secp384r1"}:
        raise CaError("certificate request: the key must be ECDSA P-256 or P-384")
    return csr


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM; encrypted with the best scheme cryptography offers when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if passphrase is not None:
        if not passphrase:
            raise CaPassphraseError("the CA key passphrase is empty")
        encryption = serialization.BestAvailableEncryption(passphrase)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def read_passphrase_file(path: str | Path, what: str) -> bytes:
    """A passphrase kept in a file (a mounted secret). A trailing newline (echo, editors) is not part of it; other
    whitespace is. `what` names the setting in errors."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise CaPassphraseError(f"{what} {path}: {err.strerror or err}") from None
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        raise CaPassphraseError(f"{what} {path}: the file is empty")
    return value.encode()


def load_ca_key(data: bytes, passphrase: bytes | None, *, name: str = "ca.key") -> ec.EllipticCurvePrivateKey:
    """The CA's private key from PEM. An encrypted key needs its passphrase (CaPassphraseError when it is missing
    or wrong); an unencrypted one still loads, with a warning, so that existing CA directories keep working."""
    encrypted = data.lstrip().startswith(_ENCRYPTED_PEM)
    if encrypted and passphrase is None:
        raise CaPassphraseError(f"{name} is encrypted and no passphrase was given")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except ValueError as err:
        if encrypted:
            # cryptography says only "Bad decrypt. Incorrect password?"; a corrupted file reads the same.
            raise CaPassphraseError(f"{name}: wrong passphrase (or a damaged key file)") from None
        raise CaError(f"{name}: not a readable PEM private key ({err})") from None
    except TypeError as err:
        raise CaError(f"{name}: {err}") from None
    if not encrypted:
        log.warning("%s is stored unencrypted; protect it with a passphrase (infermesh ca passphrase)", name)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{name} is not an ECDSA key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_csr(key: ec.EllipticCurvePrivateKey, node: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, check_node_name(node))]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _san_entries(spiffe_id: str, hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ip_address(host)))
        except ValueError:
            if not re.match(r"^[A-Za-z0-9.-]{1,253}$", host):
                raise CaError(f"host {host!r}: neither an IP address nor a DNS name") from None
            names.append(x509.DNSName(host))
    return names


def load_crl(data: bytes, ca_cert: x509.Certificate) -> set[int]:
    """Revoked serials of a CRL, after checking that the CA signed it."""
    try:
        crl = x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_crl(data)
    except (ValueError, TypeError) as err:
        raise CaError(f"CRL: not a valid X.509 CRL ({err})") from None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise CaError("CRL: not signed by the mesh CA")
    return {entry.serial_number for entry in crl}


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate, now: dt.datetime | None = None) -> None:
    """Chain and validity window of a leaf under the CA (the TLS handshake does the same; the portal needs it for
    renewals over plain HTTPS)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CaError("certificate: not issued by the mesh CA") from None
    at = now or _now()
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise CaError(f"certificate: outside its validity ({cert.not_valid_before_utc} .. {cert.not_valid_after_utc})")


class CertificateAuthority:
    """A root key and certificate, with a revoked-serial list and its CRL, kept in one directory."""

    def __init__(
        self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, trust_domain: str, directory: Path | None = None
    ) -> None:
        self.cert = cert
        self.key = key
        self.trust_domain = check_trust_domain(trust_domain)
        self.directory = directory

    # -- storage ---------------------------------------------------------------------------------------------
    @classmethod
    def init(
        cls, directory: str | Path, trust_domain: str, *, days: int = 3650, passphrase: bytes | None = None
    ) -> CertificateAuthority:
        """A new root in `directory`; its key is encrypted with `passphrase` when one is given (mode 0600)."""
        directory = Path(directory)
        check_trust_domain(trust_domain)
        if (directory / "ca.key").exists():
            raise CaError(f"{directory}: a CA already exists there (ca.key)")
        key = new_key()
        key_bytes = key_pem(key, passphrase)  # an unusable passphrase stops here, before anything is written
        directory.mkdir(parents=True, exist_ok=True)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "InferMesh"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"InferMesh mesh CA {trust_domain}"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        fd = os.open(directory / "ca.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_bytes)
        (directory / "ca.crt").write_bytes(cert_pem(cert))
        (directory / "ca.json").write_text(json.dumps({"trust_domain": trust_domain}))
        ca = cls(cert, key, trust_domain, directory)
        ca._write_revoked({})
        return ca

    @classmethod
    def load(cls, directory: str | Path, passphrase: bytes | None = None) -> CertificateAuthority:
        directory = Path(directory)
        try:
            meta = json.loads((directory / "ca.json").read_text())
            cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
            key_bytes = (directory / "ca.key").read_bytes()
        except FileNotFoundError as err:
            raise CaError(
                f"{directory}: no CA there ({Path(err.filename).name} missing; run `infermesh ca init`)"
            ) from None
        except (ValueError, TypeError) as err:
            raise CaError(f"{directory}: unreadable CA material ({err})") from None
        key = load_ca_key(key_bytes, passphrase, name=str(directory / "ca.key"))
        if key.public_key() != cert.public_key():
            raise CaError(f"{directory}: ca.key does not belong to ca.crt")
        return cls(cert, key, meta["trust_domain"], directory)

    @classmethod
    def open(cls, directory: str | Path, trust_domain: str, passphrase: bytes | None = None) -> CertificateAuthority:
        """Load the CA in `directory`, creating it on first use (the portal's CA)."""
        if (Path(directory) / "ca.key").exists():
            return cls.load(directory, passphrase)
        try:
            return cls.init(directory, trust_domain, passphrase=passphrase)
        except CaPassphraseError:
            raise
        except CaError:
            return cls.load(directory, passphrase)  # another process created it meanwhile

    def save_key(self, passphrase: bytes | None) -> None:
        """Rewrite ca.key under a new passphrase (None: unencrypted), atomically and with mode 0600."""
        assert self.directory is not None
        data = key_pem(self.key, passphrase)
        tmp = self.directory / "ca.key.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.directory / "ca.key")

    def _revoked_file(self) -> Path:
        assert self.directory is not None
        return self.directory / "revoked.json"

    def revoked(self) -> dict[int, str]:
        if self.directory is None:
            return {}
        try:
            raw = json.loads(self._revoked_file().read_text())
        except FileNotFoundError:
            return {}
        return {int(serial): reason for serial, reason in raw.items()}

    def _write_revoked(self, revoked: dict[int, str]) -> None:
        if self.directory is None:
            return
        tmp = self._revoked_file().with_suffix(".tmp")
        tmp.write_text(json.dumps({str(s): r for s, r in sorted(revoked.items())}))
        tmp.replace(self._revoked_file())
        (self.directory / "crl.pem").write_bytes(self.crl_pem(revoked))

    # -- issuing ---------------------------------------------------------------------------------------------
    def issue(
        self,
        *,
        public_key: ec.EllipticCurvePublicKey,
        node: str,
        roles: Iterable[str],
        ttl_s: int = 3600,
        hosts: Sequence[str] = ("127.0.0.1", "localhost"),
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A node's SVID: `spiffe://<td>/node/<name>`, its roles as subject OUs, for both ends of mTLS."""
        role_list = check_roles(roles)
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "InferMesh")]
        subject += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, r) for r in role_list]
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, node))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        spiffe_id = spiffe_id_for(self.trust_domain, node)
        return self._sign(public_key, subject, spiffe_id, hosts, usages, ttl_s, now)

    def issue_service(
        self,
        *,
        public_key: ec.EllipticCurvePublicKey,
        service: str,
        hosts: Sequence[str],
        ttl_s: int = 3600,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A server certificate for a mesh service that is not a node (the portal's mesh listener):
        `spiffe://<td>/<service>`, server authentication only."""
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,62}", service):
            raise CaError(f"service {service!r}: lower-case letters, digits and '-', starting with a letter")
        subject = [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "InferMesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"InferMesh {service}"),
        ]
        spiffe_id = f"spiffe://{self.trust_domain}/{service}"
        return self._sign(public_key, subject, spiffe_id, hosts, [ExtendedKeyUsageOID.SERVER_AUTH], ttl_s, now)

    def _sign(
        self,
        public_key: ec.EllipticCurvePublicKey,
        subject: list[x509.NameAttribute],
        spiffe_id: str,
        hosts: Sequence[str],
        usages: list[x509.ObjectIdentifier],
        ttl_s: int,
        now: dt.datetime | None,
    ) -> x509.Certificate:
        if not 60 <= ttl_s <= MAX_TTL_S:
            raise CaError(f"ttl_s: must be between 60 and {MAX_TTL_S}, got {ttl_s}")
        start = now or _now()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - dt.timedelta(seconds=60))
            .not_valid_after(start + dt.timedelta(seconds=ttl_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(_san_entries(spiffe_id, hosts)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue_for_csr(
        self, csr_pem: bytes | str, *, node: str, roles: Iterable[str], ttl_s: int = 3600, hosts: Sequence[str] = ()
    ) -> x509.Certificate:
        csr = load_csr(csr_pem)
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return self.issue(
            public_key=key, node=node, roles=roles, ttl_s=ttl_s, hosts=hosts or ("127.0.0.1", "localhost")
        )

    # -- revocation ------------------------------------------------------------------------------------------
    def revoke(self, serial: int, reason: str = "") -> None:
        revoked = self.revoked()
        revoked[int(serial)] = reason
        self._write_revoked(revoked)

    def crl_pem(self, revoked: dict[int, str] | None = None) -> bytes:
        revoked = self.revoked() if revoked is None else revoked
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=1))
            .next_update(now + dt.timedelta(hours=1))
        )
        for serial in sorted(revoked):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)
