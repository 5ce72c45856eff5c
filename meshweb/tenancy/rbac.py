"""Tenant-scoped access, decided here and nowhere else.

A principal is who acts (a user through a session, or an API token) with a role per tenant. `restrict()` narrows
any queryset to the rows the principal may see or change; objects outside it answer 404, not 403.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.db import models

from meshweb.tenancy.roles import RANK, Role, at_least

M = TypeVar("M", bound=models.Model)


@dataclass(frozen=True)
class Principal:
    name: str  # "user:alice" or "token:im_ab12cd34"
    roles: dict[int, str] = field(default_factory=dict)  # tenant id -> role
    platform_admin: bool = False
    user_id: int | None = None
    is_authenticated: bool = True  # DRF's IsAuthenticated and throttles read this

    @property
    def pk(self) -> int | None:
        return self.user_id

    def role_in(self, tenant_id: int | None) -> str | None:
        if self.platform_admin:
            return Role.PLATFORM_ADMIN
        if tenant_id is None:
            return None
        return self.roles.get(tenant_id)

    def can(self, tenant_id: int | None, minimum: str) -> bool:
        role = self.role_in(tenant_id)
        return role is not None and at_least(role, minimum)

    def tenants_with(self, minimum: str) -> list[int]:
        return sorted(tid for tid, role in self.roles.items() if at_least(role, minimum))

    def best_role(self) -> str | None:
        if self.platform_admin:
            return Role.PLATFORM_ADMIN
        return max(self.roles.values(), key=RANK.__getitem__, default=None)


def principal_for_user(user: Any) -> Principal:
    from meshweb.tenancy.models import Membership

    if user is None or not getattr(user, "is_authenticated", False):
        return Principal(name="anonymous", is_authenticated=False)
    roles = {m.tenant_id: m.role for m in Membership.objects.filter(user_id=user.pk, tenant__is_active=True)}
    admin = bool(user.is_superuser) or Role.PLATFORM_ADMIN in roles.values()
    return Principal(name=f"user:{user.get_username()}", roles=roles, platform_admin=admin, user_id=user.pk)


def restrict(queryset: models.QuerySet[M], principal: Principal, minimum: str = Role.VIEWER) -> models.QuerySet[M]:
    """Rows of `queryset` that `principal` holds at least `minimum` on.

    Platform-wide objects (no tenant path) are visible to every authenticated principal and writable only by
    platform admins.
    """
    if not principal.is_authenticated:
        return queryset.none()
    if principal.platform_admin:
        return queryset
    path: str = getattr(queryset.model, "TENANT_PATH", "")
    if not path:
        return queryset if minimum == Role.VIEWER else queryset.none()
    return queryset.filter(**{f"{path}__in": principal.tenants_with(minimum)})


def tenant_of(obj: models.Model) -> int | None:
    """The tenant id an object belongs to, following its TENANT_PATH (None for platform-wide objects)."""
    path: str = getattr(obj, "TENANT_PATH", "")
    if not path:
        return None
    value: Any = obj
    for part in path.split("__"):
        value = getattr(value, part)
    return int(value) if value is not None else None
