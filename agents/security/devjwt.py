"""`infermesh ca operator-token`: a signing key kept next to the offline CA, its JWKS, and operators' bearer JWTs
signed with it, so that an agent configured with `tls.jwt.jwks_file` accepts cordon, drain and store writes from
`ctl` without an OIDC provider (a mesh with a provider points `tls.jwt.jwks_url` at it instead)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

KEY_FILE = "jwt-signing.pem"
JWKS_FILE = "jwks.json"


def signing_key(directory: str | Path) -> tuple[Any, str]:
    """The directory's RSA signing key and its key id, created (with jwks.json beside it) on first use."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    d = Path(directory)
    path = d / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path}: not an RSA private key")
    else:
        d.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.touch(mode=0o600)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    kid = hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()[:16]
    jwks = d / JWKS_FILE
    if not jwks.exists():
        jwks.write_text(json.dumps({"keys": [{**public, "kid": kid, "use": "sig", "alg": "RS256"}]}, indent=2) + "\n")
    return key, kid


def operator_token(
    directory: str | Path, *, subject: str, claim: str, values: list[str], issuer: str, audience: str, ttl_s: int
) -> str:
    import jwt

    key, kid = signing_key(directory)
    now = int(time.time())
    claims = {"sub": subject, "iss": issuer, "aud": audience, "iat": now, "exp": now + ttl_s, claim: values}
    return str(jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid}))
