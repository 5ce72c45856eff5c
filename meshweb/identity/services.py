"""Writes of the identity domain: OIDC logins (user binding + claim-mapped memberships) and login refusals."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from meshweb.audit.services import audit_record
from meshweb.identity.mapping import Rule, roles_for
from meshweb.identity.models import OidcIdentity
from meshweb.tenancy.models import Membership, Tenant
from meshweb.tenancy.rbac import Principal
from meshweb.tenancy.scoped.writes import object_delete
from meshweb.tenancy.services import membership_set

log = logging.getLogger(__name__)


class LoginRefused(Exception):
    """The provider vouched for the user, but the portal will not let them in; the message says why."""


def _actor(issuer: str, subject: str) -> Principal:
    # Memberships follow the provider's claims: the change is recorded in the name of that identity.
    return Principal(name=f"oidc:{subject}@{issuer}"[:200], platform_admin=True)


def _username(issuer: str, subject: str, claims: Mapping[str, Any]) -> str:
    base = str(claims.get("preferred_username") or str(claims.get("email") or "user").split("@")[0])
    base = re.sub(r"[^\w.@+-]", "-", base)[:100] or "user"
    digest = hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:10]
    return f"{base}.{digest}"


def tenant_roles(claims: Mapping[str, Any], rules: list[Rule]) -> dict[Tenant, str]:
    """Active tenants the claims map to, with the role; rules naming unknown tenants are ignored (and logged)."""
    wanted = roles_for(claims, rules)
    tenants = {t.slug: t for t in Tenant.objects.filter(slug__in=list(wanted), is_active=True)}
    for slug in sorted(set(wanted) - set(tenants)):
        log.warning("claim mapping names tenant %r, which does not exist or is disabled", slug)
    return {tenants[slug]: role for slug, role in wanted.items() if slug in tenants}


@transaction.atomic
def login_refusal_record(*, issuer: str, subject: str, reason: str) -> None:
    identity = OidcIdentity.objects.filter(issuer=issuer, subject=subject).first() or OidcIdentity(
        issuer=issuer, subject=subject
    )
    audit_record(
        actor=f"oidc:{subject}@{issuer}"[:200],
        action="identity.login_refused",
        obj=identity,
        tenant_id=None,
        after={"issuer": issuer, "subject": subject, "reason": reason},
    )


def identity_login(*, issuer: str, claims: Mapping[str, Any], rules: list[Rule]) -> Any:
    """The user bound to (issuer, sub), created on first login, with memberships set from the claims.

    Raises LoginRefused (after recording it) when the claims map to no tenant; memberships are then left as they
    were, so a provider outage of group data does not wipe them.
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise LoginRefused("the provider's answer has no subject (sub)")
    if claims.get("email_verified") is False:
        # An unverified email is only display data here, never an identity; nothing to refuse.
        claims = {k: v for k, v in claims.items() if k != "email"}
    wanted = tenant_roles(claims, rules)
    if not wanted:
        reason = "your account's claims map to no tenant of this portal"
        login_refusal_record(issuer=issuer, subject=subject, reason=reason)
        raise LoginRefused(reason)
    return _bind(issuer=issuer, subject=subject, claims=claims, wanted=wanted)


@transaction.atomic
def _bind(*, issuer: str, subject: str, claims: Mapping[str, Any], wanted: dict[Tenant, str]) -> Any:
    identity = OidcIdentity.objects.select_related("user").filter(issuer=issuer, subject=subject).first()
    user_model = get_user_model()
    email = str(claims.get("email") or "")
    if identity is None:
        user = user_model.objects.create_user(_username(issuer, subject, claims), email=email)
        user.set_unusable_password()
        identity = OidcIdentity(user=user, issuer=issuer, subject=subject)
    user = identity.user
    user.email = email
    user.first_name = str(claims.get("given_name") or "")[:150]
    user.last_name = str(claims.get("family_name") or "")[:150]
    user.last_login = timezone.now()
    user.save()

    actor = _actor(issuer, subject)
    current = {m.tenant_id: m for m in Membership.objects.filter(user=user).select_related("tenant")}
    for tenant, role in wanted.items():
        existing = current.pop(tenant.pk, None)
        if existing is None or existing.role != role:
            membership_set(principal=actor, tenant=tenant, user=user, role=role)
    for stale in current.values():
        object_delete(principal=actor, obj=stale)

    before = None if identity.pk is None else {"last_roles": identity.last_roles}
    identity.email = email
    identity.last_login_at = timezone.now()
    identity.last_roles = {tenant.slug: role for tenant, role in wanted.items()}
    identity.save()
    audit_record(
        actor=actor.name,
        action="identity.login",
        obj=identity,
        tenant_id=None,
        before=before,
        after={"user": user.get_username(), "roles": identity.last_roles},
    )
    return user
