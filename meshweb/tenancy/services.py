"""Writes of the tenancy domain: tenants (with their quota), memberships and API tokens."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import transaction
from django.utils import timezone

from agents.proto.access import KEY_PREFIX
from meshweb.audit.services import audit_record
from meshweb.tenancy.models import ApiToken, InferenceKey, Membership, Quota, Tenant
from meshweb.tenancy.rbac import Principal
from meshweb.tenancy.roles import Role
from meshweb.tenancy.tokens import new_token

SYSTEM = Principal(name="system", platform_admin=True)


@transaction.atomic
def tenant_create(
    *,
    principal: Principal,
    slug: str,
    name: str = "",
    quota: dict[str, Any] | None = None,
    regions: list[str] | None = None,
) -> Tenant:
    tenant = Tenant(slug=slug, name=name or slug, regions=regions)
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


def _new_inference_key() -> tuple[str, str, str]:
    """(plaintext, prefix, SHA-256 of the whole plaintext): routers hash what clients send and look it up."""
    prefix = secrets.token_hex(6)
    plaintext = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return plaintext, prefix, hashlib.sha256(plaintext.encode()).hexdigest()


# The names among `names` that are models of the tenant's catalog; the catalog app (above tenancy) registers it at
# ready, so that tenancy never imports it.
_catalog_names: Callable[[Tenant, list[str]], set[str]] | None = None


def register_catalog(names_in_catalog: Callable[[Tenant, list[str]], set[str]]) -> None:
    global _catalog_names
    _catalog_names = names_in_catalog


KEY_LIMITS = ("requests_per_s", "tokens_per_min", "concurrent_requests_max", "tokens_per_day")


@transaction.atomic
def inference_key_create(
    *,
    principal: Principal,
    tenant: Tenant,
    name: str = "",
    model_names: list[str] | None = None,
    expires_at: datetime | None = None,
    limits: dict[str, Any] | None = None,
) -> tuple[InferenceKey, str]:
    """A new inference API key; the plaintext is returned once and never stored. Scoped models must be models of
    the tenant's catalog; an expiry must lie in the future."""
    names = list(dict.fromkeys(model_names or []))
    if _catalog_names is None:
        raise ImproperlyConfigured("no model catalog registered (meshweb.catalog must be in INSTALLED_APPS)")
    known = _catalog_names(tenant, names) if names else set()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValidationError(
            {"models": [f"model {n!r} is not in the catalog of tenant {tenant.slug!r}" for n in unknown]}
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": ["must lie in the future"]})
    extra = set(limits or {}) - set(KEY_LIMITS)
    if extra:
        raise ValidationError({"limits": [f"unknown limit {k!r}; known: {', '.join(KEY_LIMITS)}" for k in extra]})
    plaintext, prefix, key_hash = _new_inference_key()
    key = InferenceKey(
        tenant=tenant,
        name=name,
        prefix=prefix,
        key_hash=key_hash,
        model_names=names,
        expires_at=expires_at,
        **(limits or {}),
    )
    key.full_clean()
    key.save()
    snapshot = key.snapshot()
    snapshot.pop("key_hash", None)
    audit_record(actor=principal.name, action="inference_key.create", obj=key, tenant_id=tenant.pk, after=snapshot)
    return key, plaintext


@transaction.atomic
def inference_key_revoke(*, principal: Principal, key: InferenceKey) -> InferenceKey:
    """Revoked keys stay listed (audit) but leave the agents' store, so every router refuses them."""
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at", "updated_at"])
        audit_record(actor=principal.name, action="inference_key.revoke", obj=key, tenant_id=key.tenant_id)
    return key
