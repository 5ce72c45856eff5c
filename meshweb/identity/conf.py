"""OIDC settings from the environment (`OIDC_*`), merged into meshweb.settings.

OIDC is on when `OIDC_OP_ISSUER` is set. Every endpoint is configured explicitly (no discovery at start): a missing
one is an error naming it, so a misconfigured portal stops at start instead of failing at the first login.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REQUIRED_ENDPOINTS = (
    "OIDC_OP_AUTHORIZATION_ENDPOINT",
    "OIDC_OP_TOKEN_ENDPOINT",
    "OIDC_OP_USER_ENDPOINT",
    "OIDC_OP_JWKS_ENDPOINT",
)


class OidcConfigError(ValueError):
    """An OIDC_* variable is missing or invalid; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise OidcConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if value < 0:
        raise OidcConfigError(f"{name}: must be 0 or more, got {value}")
    return value


def oidc_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Django settings for OIDC login and bearer tokens; empty apart from the flag when OIDC is off."""
    issuer = env.get("OIDC_OP_ISSUER", "").strip()
    if not issuer:
        return {"OIDC_ENABLED": False}
    missing = [name for name in (*REQUIRED_ENDPOINTS, "OIDC_RP_CLIENT_ID") if not env.get(name, "").strip()]
    if missing:
        raise OidcConfigError(f"OIDC_OP_ISSUER is set but {', '.join(missing)} is not")
    algo = env.get("OIDC_RP_SIGN_ALGO", "RS256")
    if not algo.startswith(("RS", "ES", "PS")):
        raise OidcConfigError(f"OIDC_RP_SIGN_ALGO: only asymmetric algorithms are accepted, got {algo!r}")
    client_id = env["OIDC_RP_CLIENT_ID"].strip()
    return {
        "OIDC_ENABLED": True,
        "OIDC_OP_ISSUER": issuer,
        "OIDC_OP_AUTHORIZATION_ENDPOINT": env["OIDC_OP_AUTHORIZATION_ENDPOINT"].strip(),
        "OIDC_OP_TOKEN_ENDPOINT": env["OIDC_OP_TOKEN_ENDPOINT"].strip(),
        "OIDC_OP_USER_ENDPOINT": env["OIDC_OP_USER_ENDPOINT"].strip(),
        "OIDC_OP_JWKS_ENDPOINT": env["OIDC_OP_JWKS_ENDPOINT"].strip(),
        "OIDC_OP_END_SESSION_ENDPOINT": env.get("OIDC_OP_END_SESSION_ENDPOINT", "").strip(),
        "OIDC_RP_CLIENT_ID": client_id,
        "OIDC_RP_CLIENT_SECRET": env.get("OIDC_RP_CLIENT_SECRET", ""),
        "OIDC_RP_SIGN_ALGO": algo,
        "OIDC_RP_SCOPES": env.get("OIDC_RP_SCOPES", "openid email profile groups"),
        "OIDC_USE_PKCE": True,
        "OIDC_PKCE_CODE_CHALLENGE_METHOD": "S256",
        "OIDC_USE_NONCE": True,
        # Kept for RP-initiated logout (id_token_hint) at the provider.
        "OIDC_STORE_ID_TOKEN": True,
        "OIDC_TIMEOUT": _int(env, "OIDC_TIMEOUT_S", 10),
        "OIDC_VERIFY_SSL": env.get("OIDC_VERIFY_SSL", "true").lower() not in {"0", "false", "no", "off"},
        "OIDC_OP_LOGOUT_URL_METHOD": "meshweb.identity.views.provider_logout_url",
        "OIDC_CLAIM_MAPPING": env.get("OIDC_CLAIM_MAPPING", ""),
        "OIDC_CLAIM_MAPPING_FILE": env.get("OIDC_CLAIM_MAPPING_FILE", ""),
        "OIDC_API_AUDIENCE": env.get("OIDC_API_AUDIENCE", "").strip() or client_id,
        "OIDC_JWKS_CACHE_S": _int(env, "OIDC_JWKS_CACHE_S", 300),
        "OIDC_LEEWAY_S": _int(env, "OIDC_LEEWAY_S", 30),
        "LOGIN_REDIRECT_URL": env.get("OIDC_LOGIN_REDIRECT_URL", "/"),
        "LOGIN_REDIRECT_URL_FAILURE": "/auth/refused/",
        "LOGOUT_REDIRECT_URL": "/",
    }


def authentication_backends(enabled: bool) -> list[str]:
    backends = ["django.contrib.auth.backends.ModelBackend"]
    if enabled:
        backends.append("meshweb.identity.backend.OidcBackend")
    return backends


def setting(name: str, default: Any = None) -> Any:
    """An OIDC setting at run time (they are added to the settings module dynamically, so typed access cannot see
    them)."""
    from django.conf import settings

    return getattr(settings, name, default)
