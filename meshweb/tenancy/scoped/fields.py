"""Relation fields that only accept objects the requester may write to, so a foreign id reads as unknown."""

from __future__ import annotations

from typing import Any

from django.db import models
from rest_framework import serializers

from meshweb.tenancy.permissions import principal_of, write_role
from meshweb.tenancy.rbac import restrict


def _scoped(field: serializers.RelatedField, queryset: models.QuerySet[Any]) -> models.QuerySet[Any]:  # type: ignore[type-arg]
    request = field.context.get("request")
    view = field.context.get("view")
    if request is None:
        return queryset.none()
    minimum = write_role(view) if view is not None else "platform_admin"
    return restrict(queryset, principal_of(request), minimum)


class ScopedPrimaryKeyRelatedField(serializers.PrimaryKeyRelatedField):  # type: ignore[type-arg]
    def get_queryset(self) -> models.QuerySet[Any]:
        queryset = super().get_queryset()
        assert queryset is not None
        return _scoped(self, queryset)


class ScopedSlugRelatedField(serializers.SlugRelatedField):  # type: ignore[type-arg]
    def get_queryset(self) -> models.QuerySet[Any]:
        queryset = super().get_queryset()
        assert queryset is not None
        return _scoped(self, queryset)


class CurrentTenantDefault:
    """The requester's tenant when its credentials write to exactly one; otherwise `tenant` must be given."""

    requires_context = True

    def __call__(self, field: serializers.Field) -> Any:  # type: ignore[type-arg]
        from meshweb.tenancy.models import Tenant

        request = field.context["request"]
        principal = principal_of(request)
        view = field.context.get("view")
        candidates = principal.tenants_with(write_role(view))
        if len(candidates) == 1 and not principal.platform_admin:
            # An API token authenticated with its tenant already loaded: no second read of the same row.
            loaded = getattr(getattr(request, "auth", None), "tenant", None)
            if isinstance(loaded, Tenant) and loaded.pk == candidates[0]:
                return loaded
            return Tenant.objects.get(pk=candidates[0])
        raise serializers.ValidationError("This field is required when your credentials cover several tenants.")

    def __repr__(self) -> str:
        return "CurrentTenantDefault()"


def tenant_field() -> ScopedSlugRelatedField:
    from meshweb.tenancy.models import Tenant

    return ScopedSlugRelatedField(
        slug_field="slug",
        queryset=Tenant.objects.all(),
        default=CurrentTenantDefault(),
        help_text="Tenant slug; defaults to the requester's only tenant.",
    )
