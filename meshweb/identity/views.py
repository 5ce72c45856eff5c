"""Identity pages: who am I, why a login was refused, and the provider's logout URL."""

from __future__ import annotations

from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from meshweb.identity.backend import REFUSAL_KEY
from meshweb.identity.conf import setting
from meshweb.tenancy.models import Tenant
from meshweb.tenancy.rbac import principal_for_user


def me(request: HttpRequest) -> JsonResponse:
    """The session's principal with its tenant roles (by slug); `authenticated: false` when nobody is logged in."""
    principal = principal_for_user(request.user)
    slugs = dict(Tenant.objects.filter(pk__in=list(principal.roles)).values_list("pk", "slug"))
    return JsonResponse(
        {
            "authenticated": principal.is_authenticated,
            "name": principal.name,
            "platform_admin": principal.platform_admin,
            "roles": {slugs[tid]: role for tid, role in sorted(principal.roles.items()) if tid in slugs},
            "oidc": setting("OIDC_ENABLED", False),
        }
    )


def refused(request: HttpRequest) -> HttpResponse:
    reason = request.session.pop(REFUSAL_KEY, "") or "the sign-in could not be completed"
    return render(request, "identity/refused.html", {"reason": reason}, status=403)


def provider_logout_url(request: HttpRequest) -> str:
    """RP-initiated logout at the provider when it has an end-session endpoint, else back home."""
    endpoint = setting("OIDC_OP_END_SESSION_ENDPOINT", "")
    if not endpoint:
        return str(setting("LOGOUT_REDIRECT_URL"))
    params = {"client_id": setting("OIDC_RP_CLIENT_ID"), "post_logout_redirect_uri": request.build_absolute_uri("/")}
    id_token = request.session.get("oidc_id_token")
    if id_token:
        params["id_token_hint"] = id_token
    return f"{endpoint}?{urlencode(params)}"
