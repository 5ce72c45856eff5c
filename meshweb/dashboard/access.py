"""Who may use the dashboard: platform admins see everything, tenant admins see their tenants and the fleet."""

from __future__ import annotations

from meshweb.tenancy.rbac import Principal
from meshweb.tenancy.roles import Role


def may_use_dashboard(principal: Principal) -> bool:
    return principal.is_authenticated and (principal.platform_admin or bool(principal.tenants_with(Role.TENANT_ADMIN)))


def may_steer_fleet(principal: Principal) -> bool:
    """Node status changes (quarantine, release, cordon) are platform-wide, so platform admins only."""
    return principal.is_authenticated and principal.platform_admin


def visible_tenant_ids(principal: Principal) -> list[int] | None:
    """Tenants whose rows the principal sees on the dashboard; None means all of them."""
    if principal.platform_admin:
        return None
    return principal.tenants_with(Role.VIEWER)
