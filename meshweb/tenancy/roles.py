"""Roles, ordered: each role can do everything the roles below it can."""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    MEMBER = "member", "Member"
    OPERATOR = "operator", "Operator"
    TENANT_ADMIN = "tenant_admin", "Tenant admin"
    PLATFORM_ADMIN = "platform_admin", "Platform admin"


RANK: dict[str, int] = {role.value: rank for rank, role in enumerate(Role)}


def at_least(role: str, minimum: str) -> bool:
    return RANK[role] >= RANK[minimum]
