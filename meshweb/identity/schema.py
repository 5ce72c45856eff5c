"""OpenAPI security scheme for OIDC bearer tokens (API tokens and sessions are in meshweb/core/api/schema.py)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class OidcBearerScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "meshweb.identity.authentication.OidcBearerAuthentication"
    name = "oidcBearer"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": (
                "An access token (JWT, RS256) from the portal's OpenID provider, audience `OIDC_API_AUDIENCE`; "
                "tenant roles come from its claims through the claim mapping."
            ),
        }
