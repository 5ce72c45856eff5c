"""DRF permission: reads need any role in a visible tenant; writes need the view's `write_role` there."""

from __future__ import annotations

from typing import Any

from rest_framework import permissions
from rest_framework.request import Request

from meshweb.tenancy.rbac import Principal, tenant_of
from meshweb.tenancy.roles import Role


def principal_of(request: Request) -> Principal:
    user = request.user
    if isinstance(user, Principal):
        return user
    return Principal(name="anonymous", is_authenticated=False)


class TenantRolePermission(permissions.BasePermission):
    message = "Your role does not allow this action."

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = principal_of(request)
        if not principal.is_authenticated:
            return False
        if request.method in permissions.SAFE_METHODS:
            return True
        if getattr(view, "lookup_url_kwarg", None) in getattr(view, "kwargs", {}) or "pk" in getattr(
            view, "kwargs", {}
        ):
            # Writes to one object are decided on that object, after the restricted lookup: objects outside the
            # requester's tenants then answer 404 rather than revealing themselves with a 403.
            return True
        minimum = write_role(view)
        return principal.platform_admin or bool(principal.tenants_with(minimum))

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        principal = principal_of(request)
        if request.method in permissions.SAFE_METHODS:
            return True
        return principal.can(tenant_of(obj), write_role(view))


def write_role(view: Any) -> str:
    action = getattr(view, "action", None)
    per_action: dict[str, str] = getattr(view, "action_roles", {})
    if action in per_action:
        return per_action[action]
    return str(getattr(view, "write_role", Role.PLATFORM_ADMIN))
