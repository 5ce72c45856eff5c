"""Hypothesis on the identity parsers: certificates, CSRs, CRLs, SPIFFE IDs, join tokens, claim mappings and bearer
JWTs. Garbage is refused with the module's own error type, never with a crash."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.security.authz import PeerCache
from agents.security.ca import (
    CaError,
    CertificateAuthority,
    cert_pem,
    load_certificate,
    load_crl,
    load_csr,
    make_csr,
    new_key,
    parse_spiffe_id,
    parse_svid,
)
from meshweb.identity.mapping import MappingError, parse_mapping, roles_for
from meshweb.identity.mesh import EnrollmentRefused, split_join_token
from meshweb.identity.tokens import JwtVerifier, TokenError

FUZZ = settings(
    max_examples=int(os.environ.get("INFERMESH_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
PEM_CERT = st.builds(
    lambda body: b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(body) + b"-----END CERTIFICATE-----\n",
    st.binary(max_size=600),
)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("fuzz-ca"), "fuzz.test")


@FUZZ
@given(st.one_of(st.binary(max_size=2000), PEM_CERT))
def test_certificate_parser_refuses_garbage(data: bytes) -> None:
    with pytest.raises(CaError):
        parse_svid(data)


@pytest.fixture(scope="module")
def real_der(ca: CertificateAuthority) -> bytes:
    cert = ca.issue(public_key=new_key().public_key(), node="n1", roles=["gpu"])
    return cert.public_bytes(Encoding.DER)


@FUZZ
@given(st.data())
def test_mutated_real_certificates_parse_or_are_refused(real_der: bytes, data: Any) -> None:
    der = bytearray(real_der)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(der) - 1))
        der[i] = data.draw(st.integers(0, 255))
    try:
        info = parse_svid(bytes(der))
    except CaError:
        return
    assert info.spiffe_id.startswith("spiffe://")


@FUZZ
@given(st.binary(max_size=1500))
def test_csr_and_crl_parsers_refuse_garbage(ca: CertificateAuthority, data: bytes) -> None:
    with pytest.raises(CaError):
        load_csr(data)
    with pytest.raises(CaError):
        load_crl(data, ca.cert)


def test_crl_from_another_ca_is_refused(ca: CertificateAuthority, tmp_path: Any) -> None:
    other = CertificateAuthority.init(tmp_path / "other", "fuzz.test")
    with pytest.raises(CaError, match="not signed by the mesh CA"):
        load_crl(other.crl_pem(), ca.cert)
    assert load_crl(ca.crl_pem(), ca.cert) == set()


def test_csr_with_tampered_signature_is_refused() -> None:
    csr = make_csr(new_key(), "n1")
    body = b"".join(csr.splitlines()[1:-1])
    der = bytearray(base64.b64decode(body))
    der[-3] ^= 0xFF
    tampered = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der))
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(CaError):
        load_csr(tampered)


@FUZZ
@given(st.text(max_size=120))
def test_spiffe_id_parser(uri: str) -> None:
    try:
        td, node = parse_spiffe_id(uri)
    except CaError as err:
        assert str(err)
        return
    assert uri == f"spiffe://{td}/node/{node}"


@FUZZ
@given(st.one_of(st.text(max_size=120), st.integers(), st.none(), st.binary(max_size=50)))
def test_join_token_parser(raw: Any) -> None:
    try:
        prefix, secret = split_join_token(raw)
    except EnrollmentRefused as err:
        assert err.status == 400 and "malformed join token" in str(err)
        return
    assert raw == f"imj_{prefix}_{secret}"


@FUZZ
@given(
    st.one_of(
        st.text(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
            max_leaves=12,
        ).map(json.dumps),
    )
)
def test_claim_mapping_parser(text: str) -> None:
    try:
        rules = parse_mapping(text)
    except MappingError as err:
        assert str(err).startswith("OIDC_CLAIM_MAPPING")
        return
    assert isinstance(roles_for({"groups": ["x"]}, rules), dict)


@FUZZ
@given(st.one_of(st.text(max_size=400), st.lists(st.text(max_size=60), min_size=3, max_size=3).map(".".join)))
def test_jwt_verifier_refuses_garbage_without_fetching_keys(token: str) -> None:
    verifier = JwtVerifier(
        jwks_url="http://127.0.0.1:9/jwks",
        issuer="https://x",
        algorithms=["RS256"],
        cache_s=60,
        leeway_s=0,
        timeout_s=1,
    )
    with pytest.raises(TokenError):
        verifier.verify(token, audience="a")


@FUZZ
@given(st.binary(max_size=800))
def test_peer_cache_never_raises(data: bytes) -> None:
    assert isinstance(PeerCache().get(data), str)


def test_real_certificate_round_trip(ca: CertificateAuthority) -> None:
    key = new_key()
    cert = ca.issue(public_key=key.public_key(), node="node-1", roles=["router", "gpu"])
    info = parse_svid(cert_pem(cert))
    assert (info.node, info.roles, info.trust_domain) == ("node-1", ("gpu", "router"), "fuzz.test")
    assert load_certificate(cert_pem(cert)).serial_number == info.serial
