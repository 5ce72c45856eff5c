"""The viewset every domain API builds on: tenant-restricted querysets and audited writes through services."""

from __future__ import annotations

from typing import Any

from django.db import models
from rest_framework import mixins, viewsets
from rest_framework.serializers import BaseSerializer

from meshweb.tenancy.permissions import principal_of
from meshweb.tenancy.rbac import Principal, restrict
from meshweb.tenancy.roles import Role
from meshweb.tenancy.scoped.writes import object_create, object_delete, object_update


class ScopedViewSetMixin:
    """`read_role` narrows what is listed; `write_role` (or `action_roles`) gates writes; both per tenant."""

    read_role: str = Role.VIEWER
    write_role: str = Role.OPERATOR
    request: Any

    def base_queryset(self) -> models.QuerySet[Any]:
        raise TypeError(f"{type(self).__name__} must define base_queryset()")

    @property
    def principal(self) -> Principal:
        return principal_of(self.request)

    def get_queryset(self) -> models.QuerySet[Any]:
        return restrict(self.base_queryset(), self.principal, self.read_role)

    def perform_update(self, serializer: BaseSerializer[Any]) -> None:
        assert serializer.instance is not None
        serializer.instance = object_update(
            principal=self.principal, obj=serializer.instance, data=dict(serializer.validated_data)
        )


class ScopedModelViewSet(ScopedViewSetMixin, viewsets.ModelViewSet):  # type: ignore[type-arg]
    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]

    def perform_create(self, serializer: BaseSerializer[Any]) -> None:
        model = self.base_queryset().model
        serializer.instance = object_create(principal=self.principal, model=model, data=dict(serializer.validated_data))

    def perform_destroy(self, instance: models.Model) -> None:
        object_delete(principal=self.principal, obj=instance)


class ScopedReadOnlyViewSet(ScopedViewSetMixin, viewsets.ReadOnlyModelViewSet):  # type: ignore[type-arg]
    pass


class ScopedUpdateViewSet(ScopedViewSetMixin, mixins.UpdateModelMixin, viewsets.ReadOnlyModelViewSet):  # type: ignore[type-arg]
    http_method_names = ["get", "put", "patch", "head", "options"]
