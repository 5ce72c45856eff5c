"""DRF authentication: API tokens (`Authorization: Bearer im_...`) and sessions, both yielding a Principal."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NoReturn

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from meshweb.audit.refusals import bearer_refused
from meshweb.tenancy.models import ApiToken
from meshweb.tenancy.rbac import Principal, principal_for_user
from meshweb.tenancy.roles import Role
from meshweb.tenancy.tokens import secret_matches, split_token

# last_used_at is informative; writing it on every request would add a write to every read.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def peer_of(request: Request) -> str:
    return str(request.META.get("REMOTE_ADDR", ""))


def _refuse(request: Request, message: str, prefix: str = "", tenant_id: int | None = None) -> NoReturn:
    bearer_refused(scheme="api_token", reason=message, peer=peer_of(request), token_prefix=prefix, tenant_id=tenant_id)
    raise exceptions.AuthenticationFailed(message)


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Principal, ApiToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip().startswith("im_"):
            return None
        parts = split_token(raw.strip())
        if parts is None:
            _refuse(request, "Malformed API token.")
        prefix, secret = parts
        token = ApiToken.objects.select_related("tenant").filter(prefix=prefix).first()
        if token is None:
            _refuse(request, "Invalid API token.", prefix)
        # The token's tenant sees attempts on its tokens in its audit log; the caller learns nothing more.
        if not secret_matches(secret, token.secret_hash):
            _refuse(request, "Invalid API token.", prefix, token.tenant_id)
        now = timezone.now()
        if token.revoked_at is not None:
            _refuse(request, "API token revoked.", prefix, token.tenant_id)
        if token.expires_at is not None and token.expires_at <= now:
            _refuse(request, "API token expired.", prefix, token.tenant_id)
        if not token.tenant.is_active:
            _refuse(request, "Tenant is disabled.", prefix, token.tenant_id)
        if token.last_used_at is None or now - token.last_used_at > _LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        principal = Principal(
            name=f"token:{token.prefix}",
            roles={token.tenant_id: token.role},
            platform_admin=token.role == Role.PLATFORM_ADMIN,
        )
        return principal, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class SessionAuthentication(authentication.SessionAuthentication):
    def authenticate(self, request: Request) -> tuple[Principal, Any] | None:
        result = super().authenticate(request)
        if result is None:
            return None
        user, auth = result
        return principal_for_user(user), auth
