"""API token format and hashing: `im_<prefix>_<secret>`; the prefix finds the row, the secret is only hashed."""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "im_"


def new_token() -> tuple[str, str, str]:
    """A fresh token: (plaintext, prefix, secret hash)."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}{prefix}_{secret}", prefix, hash_secret(secret)


def hash_secret(secret: str) -> str:
    # The secret has 256 bits of entropy, so a fast hash suffices; a slow KDF would only add latency.
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(raw: str) -> tuple[str, str] | None:
    if not raw.startswith(TOKEN_PREFIX):
        return None
    prefix, sep, secret = raw[len(TOKEN_PREFIX) :].partition("_")
    if not sep or len(prefix) != 12 or not secret:
        return None
    return prefix, secret


def secret_matches(secret: str, expected_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), expected_hash)
