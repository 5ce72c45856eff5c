"""JWT validation against the provider's JWKS (PyJWT; keys cached), shared by the login and the API bearer check."""

from __future__ import annotations

import functools
from typing import Any

import jwt

from meshweb.identity.conf import setting


class TokenError(ValueError):
    """A bearer or ID token was refused; the message says why without echoing the token."""


class JwtVerifier:
    def __init__(
        self, *, jwks_url: str, issuer: str, algorithms: list[str], cache_s: int, leeway_s: int, timeout_s: int
    ) -> None:
        self.issuer = issuer
        self.algorithms = algorithms
        self.leeway_s = leeway_s
        # The JWK set is kept for cache_s; a token naming an unknown key id refetches it once (key rotation).
        self._jwks = jwt.PyJWKClient(
            jwks_url, cache_jwk_set=True, lifespan=max(cache_s, 1), cache_keys=True, timeout=timeout_s
        )

    def verify(self, token: str, *, audience: str, nonce: str | None = None) -> dict[str, Any]:
        if not isinstance(token, str) or token.count(".") != 2 or len(token) > 16384:
            raise TokenError("malformed token: not a compact JWS")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as err:
            raise TokenError(f"malformed token: {err}") from None
        if header.get("alg") not in self.algorithms:
            raise TokenError(f"token algorithm {header.get('alg')!r} is not accepted ({', '.join(self.algorithms)})")
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as err:
            raise TokenError(f"the provider's keys could not be fetched: {err}") from None
        except (jwt.PyJWKClientError, jwt.DecodeError) as err:
            raise TokenError(f"token signed with an unknown key: {err}") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=self.algorithms,
                audience=audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iat", "iss", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("token not yet valid (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise TokenError(f"token audience is not {audience!r}") from None
        except jwt.InvalidIssuerError:
            raise TokenError(f"token issuer is not {self.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise TokenError("token signature does not verify") from None
        except jwt.MissingRequiredClaimError as err:
            raise TokenError(f"token lacks the {err.claim!r} claim") from None
        except jwt.InvalidTokenError as err:
            raise TokenError(f"invalid token: {err}") from None
        if nonce is not None and claims.get("nonce") != nonce:
            raise TokenError("ID token nonce does not match the login request")
        return claims


@functools.lru_cache(maxsize=4)
def _verifier(jwks_url: str, issuer: str, algo: str, cache_s: int, leeway_s: int, timeout_s: int) -> JwtVerifier:
    return JwtVerifier(
        jwks_url=jwks_url, issuer=issuer, algorithms=[algo], cache_s=cache_s, leeway_s=leeway_s, timeout_s=timeout_s
    )


def verifier() -> JwtVerifier:
    """The verifier for the configured provider (one per process, so its key cache is shared)."""
    return _verifier(
        setting("OIDC_OP_JWKS_ENDPOINT"),
        setting("OIDC_OP_ISSUER"),
        setting("OIDC_RP_SIGN_ALGO"),
        setting("OIDC_JWKS_CACHE_S"),
        setting("OIDC_LEEWAY_S"),
        setting("OIDC_TIMEOUT") or 10,
    )
