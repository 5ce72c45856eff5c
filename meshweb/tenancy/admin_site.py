"""The Django admin is for platform admins only (superusers or platform_admin members)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from meshweb.tenancy.rbac import principal_for_user


def _platform_admin_only(request: HttpRequest) -> bool:
    user = request.user
    return bool(user.is_active and user.is_staff and principal_for_user(user).platform_admin)


admin.site.has_permission = _platform_admin_only  # type: ignore[method-assign]
admin.site.site_header = "InferMesh administration"
admin.site.site_title = "InferMesh"
