"""The `tls:` section of the agent config and what it builds: server credentials that require a client certificate
from the mesh CA (reloaded when the SVID rotates), the revoked-serial list (CRL file or URL, refreshed), bearer-JWT
checks for admin calls, and client credentials for the agent's own outbound channels."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.security.authz import AuthzInterceptor, Refusal
from agents.security.ca import CaError, check_trust_domain, load_certificate, load_crl

log = logging.getLogger("meshd.tls")
audit = logging.getLogger("meshd.audit")  # one JSON line per security refusal


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


class _SvidFiles(_Model):
    """The three PEM files of an SVID holder, checked to exist and to hold certificates when the config loads."""

    ca: str  # PEM of the mesh CA
    cert: str  # this process's SVID (PEM); replaced in place on rotation
    key: str

    @model_validator(mode="after")
    def _files(self) -> _SvidFiles:
        for name in ("ca", "cert", "key"):
            if not Path(getattr(self, name)).is_file():
                raise ValueError(f"{name}: no file {getattr(self, name)!r}")
        try:
            load_certificate(Path(self.ca).read_bytes())
            load_certificate(Path(self.cert).read_bytes())
        except CaError as err:
            raise ValueError(str(err)) from None
        return self


class TlsSection(_SvidFiles):
    trust_domain: str
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
    """Credentials and the interceptor for an agent's gRPC server. Every refused call is counted on the agent's
    metrics, written as one JSON line on the `meshd.audit` logger, and handed to the listeners (the portal link)."""

    def __init__(self, section: TlsSection, *, node: str, registry: CollectorRegistry | None = None) -> None:
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
        self._listeners: list[Callable[[Refusal], None]] = []
        self.m_refusals = Counter(
            "meshd_authz_refusals",
            "Calls refused by mTLS authorization (after the handshake), by service, method and gRPC code",
            ["service", "method", "code"],
            registry=registry,
        )
        # Failed handshakes (another CA, expired, no certificate) end inside gRPC's TLS stack, which tells Python
        # nothing about them; what it does tell is that a handshake started (the credentials are consulted).
        self.m_handshakes = Counter(
            "meshd_tls_handshakes", "TLS handshakes started on the gRPC server, failed ones included", registry=registry
        )
        self._svid = ClientIdentity(section.ca, section.cert, section.key)  # the same files serve both sides
        self._stamp = self._svid.stamp()
        # Read at scrape time from the file on disk, so a rotation shows at once (alert: certificate expiry).
        Gauge(
            "meshd_tls_certificate_expiry_timestamp_seconds",
            "Unix time at which this node's SVID (tls.cert) stops being valid",
            registry=registry,
        ).set_function(self._not_after)
        self.interceptor = AuthzInterceptor(
            node=node,
            trust_domain=section.trust_domain,
            revoked=self.revocations,
            jwt_verify=self.jwt,
            on_refusal=self._refused,
        )

    def _not_after(self) -> float:
        try:
            cert = load_certificate(Path(self.section.cert).read_bytes())
        except (OSError, CaError):
            return 0.0  # unreadable mid-rotation or gone: 0 reads as "expired" to the alert
        return cert.not_valid_after_utc.timestamp()

    def on_refusal(self, listener: Callable[[Refusal], None]) -> None:
        """Call `listener` with every refused call (it must not block: it runs inside the call)."""
        self._listeners.append(listener)

    def _refused(self, refusal: Refusal) -> None:
        self.refusals += 1
        self.m_refusals.labels(refusal.service, refusal.method_name, refusal.code).inc()
        audit.warning(
            "call refused",
            extra={
                "fields": {
                    "audit": "mesh.call_refused",
                    "caller": refusal.caller or refusal.peer,
                    "peer": refusal.peer,
                    "method": refusal.method,
                    "code": refusal.code,
                    "reason": refusal.reason,
                }
            },
        )
        for listener in self._listeners:
            try:
                listener(refusal)
            except Exception:
                log.exception("refusal listener failed")

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
            self.m_handshakes.inc()
            try:
                stamp = self._svid.stamp()
            except OSError:
                return None
            if stamp == self._stamp or not self._svid.consistent():
                return None  # unchanged, or caught between the key and the certificate being replaced
            self._stamp = stamp
            log.info("serving the rotated certificate %s", self.section.cert)
            return self._config()

        return grpc.dynamic_ssl_server_credentials(self._config(), fetch, require_client_authentication=True)


class ClientTls(_SvidFiles):
    """How a process dials mesh services with its SVID: the `tls:` section of the router, ctl flags, or an agent's
    own `tls:` section (which holds the same three files)."""

    server_name: str = ""  # check the server certificate against this name instead of the dialled host


class ClientIdentity:
    """This process's SVID on the client side: gRPC channel credentials and an `ssl.SSLContext` (HTTPS, WSS), both
    built from the files as they are now, so a channel opened after a rotation presents the new certificate."""

    def __init__(self, ca: str, cert: str, key: str, *, server_name: str = "") -> None:
        self.ca, self.cert, self.key = Path(ca), Path(cert), Path(key)
        self.server_name = server_name
        self._live: ssl.SSLContext | None = None
        self._live_stamp: tuple[int, ...] | None = None

    @classmethod
    def of(cls, section: ClientTls | TlsSection | None) -> ClientIdentity | None:
        if section is None:
            return None
        return cls(section.ca, section.cert, section.key, server_name=getattr(section, "server_name", ""))

    def stamp(self) -> tuple[int, ...]:
        """Changes whenever the certificate or key file is replaced (rotation). The inode tells apart two atomic
        replacements within one tick of the file system's clock."""
        out: list[int] = []
        for path in (self.cert, self.key):
            st = path.stat()
            out += [st.st_ino, st.st_mtime_ns, st.st_size]
        return tuple(out)

    def consistent(self) -> bool:
        """Whether the key and the certificate on disk belong together; not so for a moment during a rotation, which
        replaces the key first."""
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            probe.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError):
            return False
        return True

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )

    def grpc_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx

    def live_ssl_context(self) -> ssl.SSLContext:
        """One context for a long-lived HTTP client (whose connection pool is keyed by it): `refresh` loads a rotated
        certificate into it in place, so pooled connections stay and new handshakes present the new SVID."""
        if self._live is None:
            self._live_stamp = self.stamp()
            self._live = self.ssl_context()
        return self._live

    def refresh(self) -> bool:
        """Load a rotated certificate into the live context; False while unchanged or caught mid-rotation."""
        if self._live is None:
            return False
        try:
            before = self.stamp()
        except OSError:
            return False
        if before == self._live_stamp or not self.consistent():
            return False
        try:
            self._live.load_cert_chain(str(self.cert), str(self.key))
            after = self.stamp()
        except (OSError, ssl.SSLError):
            return False
        if after == before:  # else the files moved on while loading: load again at the next check
            self._live_stamp = before
            log.info("presenting the rotated certificate %s", self.cert)
        return True

    async def keep_current(self, check_s: float = 1.0) -> None:
        """Run beside a long-lived HTTP client: `refresh` every `check_s`."""
        while True:
            await asyncio.sleep(check_s)
            self.refresh()


def dial(
    address: str,
    identity: ClientIdentity | None,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """The one way mesh processes open an asyncio gRPC channel: mTLS with the SVID when they have one."""
    icpt = list(interceptors) or None
    if identity is None:
        return grpc.aio.insecure_channel(address, options=list(options), interceptors=icpt)
    creds, opts = identity.grpc_credentials(), [*options, *identity.grpc_options()]
    return grpc.aio.secure_channel(address, creds, options=opts, interceptors=icpt)


def dial_sync(address: str, identity: ClientIdentity | None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """`dial` for blocking callers (ctl, tests, tools)."""
    if identity is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, identity.grpc_credentials(), options=[*options, *identity.grpc_options()])


class Dialer:
    """A long-lived asyncio channel to one address that follows SVID rotation. gRPC reconnects a channel with the
    credentials it was built with, so once the certificate files change (checked at most every `check_s`),
    `channel()` opens a fresh channel that presents the new certificate and retires the old one after `grace_s`
    for the calls still on it. Callers build their stubs again when `channel()` returns another channel."""

    def __init__(
        self,
        address: str,
        identity: ClientIdentity | None,
        options: Sequence[tuple[str, Any]] = (),
        *,
        check_s: float = 1.0,
        grace_s: float = 30.0,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self.address = address
        self.identity = identity
        self.options = list(options)
        self.interceptors = list(interceptors)
        self.check_s = check_s
        self.grace_s = grace_s
        self._channel: grpc.aio.Channel | None = None
        self._stamp: tuple[int, ...] | None = None
        self._next_check = 0.0
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}

    def _open(self) -> grpc.aio.Channel:
        if self.identity is not None:
            self._stamp = self.identity.stamp()
        self._channel = dial(self.address, self.identity, self.options, self.interceptors)
        return self._channel

    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            return self._open()
        now = time.monotonic()
        if self.identity is None or now < self._next_check:
            return self._channel
        self._next_check = now + self.check_s
        try:
            changed = self.identity.stamp() != self._stamp
        except OSError:
            changed = False  # a file is being replaced: look again at the next check
        if changed and self.identity.consistent():
            old = self._channel
            log.info("reconnecting to %s with the rotated certificate %s", self.address, self.identity.cert)
            task = asyncio.get_running_loop().create_task(old.close(grace=self.grace_s))
            self._retiring[task] = old
            task.add_done_callback(lambda t: self._retiring.pop(t, None))
            return self._open()
        return self._channel

    async def close(self) -> None:
        retiring = dict(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        for old in retiring.values():
            await old.close()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
