"""The audit log, read-only, for tenant admins (their tenant) and platform admins (everything).

The log itself (meshweb.audit) sits below tenancy, since every tenancy write passes through its hook; reading it
is tenant-scoped, so its API lives here, on the tenancy-aware viewset."""

from __future__ import annotations

from typing import Any

from django.db import models
from rest_framework import serializers

from meshweb.audit.models import AuditEntry
from meshweb.tenancy.roles import Role
from meshweb.tenancy.scoped.views import ScopedReadOnlyViewSet


class AuditEntrySerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    tenant: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "at",
            "actor",
            "tenant",
            "action",
            "object_type",
            "object_id",
            "before",
            "after",
            "correlation_id",
        ]
        read_only_fields = fields


class AuditEntryViewSet(ScopedReadOnlyViewSet):
    serializer_class = AuditEntrySerializer
    read_role = Role.TENANT_ADMIN
    filterset_fields = ["action", "object_type", "object_id", "correlation_id", "actor"]
    ordering_fields = ["at", "id"]
    ordering = ["-at", "-id"]

    def base_queryset(self) -> models.QuerySet[AuditEntry]:
        return AuditEntry.objects.select_related("tenant")
