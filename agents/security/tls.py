"""The `tls:` section of the agent config and what it builds: server credentials that require a client certificate
from the mesh CA (reloaded when the SVID rotates), the revoked-serial list (CRL file or URL, refreshed), bearer-JWT
checks for admin calls, and client credentials for the agent's own outbound channels."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.security.authz import AuthzInterceptor
from agents.security.ca import CaError, check_trust_domain, load_certificate, load_crl

log = logging.getLogger("meshd.tls")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JwtSection(_Model):
    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_url: str = ""
    jwks_file: str = ""
    algorithms: list[str] = Field(default_factory=lambda: ["RS256"])
    claim: str = "groups"  # the claim holding group names
    operator_values: list[str] = Field(min_length=1)  # any of these grants mesh operation (drain, store writes, ...)
    leeway_s: int = Field(default=30, ge=0, le=600)

    @model_validator(mode="after")
    def _one_source(self) -> JwtSection:
        if bool(self.jwks_url) == bool(self.jwks_file):
            raise ValueError("give exactly one of jwks_url and jwks_file")
        return self


class RotationSection(_Model):
    portal: str = Field(min_length=1)  # base URL of the portal that issues SVIDs
    renew_fraction: float = Field(default=0.5, gt=0, lt=1)  # renew when this share of the lifetime is left
    check_s: float = Field(default=5.0, gt=0)


class TlsSection(_Model):
    trust_domain: str
    ca: str  # PEM of the mesh CA
    cert: str  # this node's SVID (PEM); replaced in place on rotation
    key: str
    crl: str = ""  # a CRL file (PEM), re-read when it changes
    crl_url: str = ""  # or fetched from the portal every crl_refresh_s
    crl_refresh_s: float = Field(default=10.0, gt=0)
    jwt: JwtSection | None = None
    rotation: RotationSection | None = None

    @field_validator("trust_domain")
    @classmethod
    def _td(cls, value: str) -> str:
        try:
            return check_trust_domain(value)
        except CaError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _files(self) -> TlsSection:
        for name in ("ca", "cert", "key"):
            if not Path(getattr(self, name)).is_file():
                raise ValueError(f"{name}: no file {getattr(self, name)!r}")
        try:
            load_certificate(Path(self.ca).read_bytes())
            load_certificate(Path(self.cert).read_bytes())
        except CaError as err:
            raise ValueError(str(err)) from None
        return self


class JwtVerifier:
    """Bearer JWTs for admin calls, checked against the provider's JWKS (cached by PyJWKClient) or a file."""

    def __init__(self, section: JwtSection) -> None:
        import jwt

        self._jwt = jwt
        self.section = section
        self._client = jwt.PyJWKClient(section.jwks_url, cache_jwk_set=True, lifespan=300) if section.jwks_url else None
        self._keys = jwt.PyJWKSet.from_json(Path(section.jwks_file).read_text()) if section.jwks_file else None

    def __call__(self, token: str) -> str | None:
        jwt = self._jwt
        s = self.section
        try:
            if self._client is not None:
                key = self._client.get_signing_key_from_jwt(token).key
            else:
                kid = jwt.get_unverified_header(token).get("kid")
                assert self._keys is not None
                matches = [k for k in self._keys.keys if k.key_id == kid]
                if not matches:
                    return "token signed with an unknown key"
                key = matches[0].key
            claims = jwt.decode(
                token,
                key,
                algorithms=s.algorithms,
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            return "token expired"
        except jwt.InvalidAudienceError:
            return "wrong audience"
        except jwt.InvalidSignatureError:
            return "token signature does not verify"
        except (jwt.PyJWTError, ValueError) as err:
            return f"invalid token ({type(err).__name__})"
        values = claims.get(s.claim)
        values = values if isinstance(values, list) else [values]
        if not any(v in s.operator_values for v in values):
            return f"claim {s.claim!r} grants no mesh operation"
        return None


class Revocations:
    """Revoked serials from the CA's CRL (file or URL); a CRL that fails to verify keeps the previous list."""

    def __init__(self, section: TlsSection) -> None:
        self.section = section
        self.ca = load_certificate(Path(section.ca).read_bytes())
        self.serials: frozenset[int] = frozenset()
        self._stamp: tuple[int, int] | None = None
        self.last_error = ""
        self.reload_file()

    def reload_file(self) -> None:
        if not self.section.crl:
            return
        try:
            st = Path(self.section.crl).stat()
        except OSError as err:
            self.last_error = f"crl: {err.strerror}"
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._apply(Path(self.section.crl).read_bytes())
            self._stamp = stamp

    def _apply(self, data: bytes) -> None:
        try:
            self.serials = frozenset(load_crl(data, self.ca))
            self.last_error = ""
        except CaError as err:
            self.last_error = str(err)
            log.error("CRL refused: %s", err)

    def fetch(self) -> None:
        with urllib.request.urlopen(self.section.crl_url, timeout=5) as resp:
            self._apply(resp.read())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.section.crl_refresh_s)
            self.reload_file()
            if self.section.crl_url:
                try:
                    await asyncio.to_thread(self.fetch)
                except OSError as err:
                    log.warning("CRL fetch from %s failed: %s", self.section.crl_url, err)

    def __call__(self) -> frozenset[int]:
        return self.serials


class ServerSecurity:
    """Credentials and the interceptor for an agent's gRPC server."""

    def __init__(self, section: TlsSection, *, node: str) -> None:
        self.section = section
        self.node = node
        self.revocations = Revocations(section)
        if section.crl_url:
            try:
                self.revocations.fetch()
            except OSError as err:
                log.warning("CRL fetch from %s failed: %s", section.crl_url, err)
        self.jwt = JwtVerifier(section.jwt) if section.jwt is not None else None
        self.refusals = 0
        self._stamp = self._files_stamp()
        self.interceptor = AuthzInterceptor(
            node=node,
            trust_domain=section.trust_domain,
            revoked=self.revocations,
            jwt_verify=self.jwt,
            on_refusal=self._count,
        )

    def _count(self, method: str, who: str, code: str) -> None:
        self.refusals += 1

    def _files_stamp(self) -> tuple[int, ...]:
        out: list[int] = []
        for name in (self.section.cert, self.section.key):
            st = Path(name).stat()
            out += [st.st_mtime_ns, st.st_size]
        return tuple(out)

    def _pair_matches(self) -> bool:
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_private_key(Path(self.section.key).read_bytes(), password=None)
            cert = load_certificate(Path(self.section.cert).read_bytes())
        except (OSError, ValueError, CaError):
            return False
        return bool(key.public_key() == cert.public_key())

    async def run(self) -> None:
        """Keep the CRL current and, with `tls.rotation`, renew the SVID before it expires."""
        tasks = [self.revocations.run()]
        rot = self.section.rotation
        if rot is not None:
            from agents.security.enroll import rotation_loop

            s = self.section
            tasks.append(
                rotation_loop(
                    rot.portal,
                    cert=Path(s.cert),
                    key=Path(s.key),
                    ca=Path(s.ca),
                    fraction=rot.renew_fraction,
                    check_s=rot.check_s,
                )
            )
        await asyncio.gather(*tasks)

    def _config(self) -> Any:
        s = self.section
        return grpc.ssl_server_certificate_configuration(
            [(Path(s.key).read_bytes(), Path(s.cert).read_bytes())], root_certificates=Path(s.ca).read_bytes()
        )

    def credentials(self) -> grpc.ServerCredentials:
        def fetch() -> Any:
            # Called by gRPC on each handshake: hand over the rotated SVID once its files change.
            try:
                stamp = self._files_stamp()
            except OSError:
                return None
            if stamp == self._stamp or not self._pair_matches():
                return None  # unchanged, or caught between the key and the certificate being replaced
            self._stamp = stamp
            log.info("serving the rotated certificate %s", self.section.cert)
            return self._config()

        return grpc.dynamic_ssl_server_credentials(self._config(), fetch, require_client_authentication=True)


def channel_credentials(ca: str, cert: str, key: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes(),
    )
