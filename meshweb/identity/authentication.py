"""DRF authentication by OIDC bearer tokens: a JWT from the provider, checked against its JWKS, mapped to the same
Principal as sessions and API tokens through the claim mapping."""

from __future__ import annotations

from typing import Any, NoReturn

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from meshweb.audit.refusals import bearer_refused
from meshweb.identity.backend import claim_rules
from meshweb.identity.conf import setting
from meshweb.identity.mapping import MappingError
from meshweb.identity.models import OidcIdentity
from meshweb.identity.services import tenant_roles
from meshweb.identity.tokens import TokenError, verifier
from meshweb.tenancy.authentication import peer_of
from meshweb.tenancy.rbac import Principal
from meshweb.tenancy.roles import Role


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    try:
        rules = claim_rules()
    except MappingError as err:
        raise exceptions.AuthenticationFailed(f"Claim mapping misconfigured: {err}") from None
    roles = {tenant.pk: role for tenant, role in tenant_roles(claims, rules).items()}
    identities = OidcIdentity.objects.filter(issuer=claims["iss"], subject=claims["sub"])
    user_id = identities.values_list("user_id", flat=True).first()
    return Principal(
        name=f"oidc:{claims['sub']}"[:200],
        roles=roles,
        platform_admin=Role.PLATFORM_ADMIN in roles.values(),
        user_id=user_id,
    )


def _refuse(request: Request, message: str) -> NoReturn:
    # Recorded without the token: its claims are unverified, and a valid-looking one is a credential.
    bearer_refused(scheme="oidc_bearer", reason=message, peer=peer_of(request))
    raise exceptions.AuthenticationFailed(message)


class OidcBearerAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <JWT>`; API tokens (`im_...`) are left to ApiTokenAuthentication."""

    def authenticate(self, request: Request) -> tuple[Principal, dict[str, Any]] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, raw = header.partition(" ")
        raw = raw.strip()
        if scheme.lower() != "bearer" or not raw or raw.startswith("im_"):
            return None
        if not setting("OIDC_ENABLED", False):
            _refuse(request, "Bearer JWTs are not accepted: OIDC is not configured.")
        try:
            claims = verifier().verify(raw, audience=setting("OIDC_API_AUDIENCE"))
        except TokenError as err:
            _refuse(request, f"Bearer token refused: {err}.")
        try:
            principal = principal_from_claims(claims)
        except exceptions.AuthenticationFailed as err:
            _refuse(request, str(err.detail))
        if not principal.roles:
            _refuse(request, "Bearer token refused: its claims map to no tenant.")
        return principal, claims

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
