"""Writes of the tenancy domain: tenants (with their quota), memberships and API tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from meshweb.audit.services import audit_record
from meshweb.tenancy.models import ApiToken, Membership, Quota, Tenant
from meshweb.tenancy.rbac import Principal
from meshweb.tenancy.roles import Role
from meshweb.tenancy.tokens import new_token

SYSTEM = Principal(name="system", platform_admin=True)


@transaction.atomic
def tenant_create(*, principal: Principal, slug: str, name: str = "", quota: dict[str, Any] | None = None) -> Tenant:
    tenant = Tenant(slug=slug, name=name or slug)
    tenant.full_clean()
    tenant.save()
    q = Quota(tenant=tenant, **(quota or {}))
    q.full_clean()
    q.save()
    audit_record(actor=principal.name, action="tenant.create", obj=tenant, tenant_id=tenant.pk, after=tenant.snapshot())
    return tenant


@transaction.atomic
def membership_set(*, principal: Principal, tenant: Tenant, user: Any, role: str) -> Membership:
    membership, created = Membership.objects.get_or_create(tenant=tenant, user=user, defaults={"role": role})
    before = None if created else membership.snapshot()
    membership.role = role
    membership.full_clean()
    membership.save()
    audit_record(
        actor=principal.name,
        action="membership.set",
        obj=membership,
        tenant_id=tenant.pk,
        before=before,
        after=membership.snapshot(),
    )
    return membership


@transaction.atomic
def token_create(
    *, principal: Principal, tenant: Tenant, role: str, name: str = "", expires_in: timedelta | None = None
) -> tuple[ApiToken, str]:
    """A new API token; the plaintext is returned once and never stored."""
    if role not in Role.values:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(Role.values)}")
    plaintext, prefix, secret_hash = new_token()
    token = ApiToken(
        tenant=tenant,
        role=role,
        name=name,
        prefix=prefix,
        secret_hash=secret_hash,
        expires_at=timezone.now() + expires_in if expires_in else None,
    )
    token.full_clean()
    token.save()
    snapshot = token.snapshot()
    snapshot.pop("secret_hash", None)
    audit_record(actor=principal.name, action="token.create", obj=token, tenant_id=tenant.pk, after=snapshot)
    return token, plaintext


@transaction.atomic
def token_revoke(*, principal: Principal, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at", "updated_at"])
        audit_record(actor=principal.name, action="token.revoke", obj=token, tenant_id=token.tenant_id)
    return token
