"""Policy endpoints."""

from __future__ import annotations

from django.db import models

from meshweb.core.api.views import ScopedModelViewSet
from meshweb.policy.api.serializers import AdmissionPolicySerializer, RoutingPolicySerializer, SloSerializer
from meshweb.policy.models import AdmissionPolicy, RoutingPolicy, Slo
from meshweb.tenancy.roles import Role


class SloViewSet(ScopedModelViewSet):
    serializer_class = SloSerializer
    write_role = Role.OPERATOR
    filterset_fields = ["model", "tenant__slug"]
    ordering_fields = ["id", "created_at"]
    ordering = ["id"]

    def base_queryset(self) -> models.QuerySet[Slo]:
        return Slo.objects.select_related("tenant")


class RoutingPolicyViewSet(ScopedModelViewSet):
    serializer_class = RoutingPolicySerializer
    write_role = Role.OPERATOR
    filterset_fields = ["model", "strategy", "tenant__slug"]
    ordering_fields = ["id", "created_at"]
    ordering = ["id"]

    def base_queryset(self) -> models.QuerySet[RoutingPolicy]:
        return RoutingPolicy.objects.select_related("tenant")


class AdmissionPolicyViewSet(ScopedModelViewSet):
    serializer_class = AdmissionPolicySerializer
    write_role = Role.OPERATOR
    filterset_fields = ["model", "tenant__slug"]
    ordering_fields = ["id", "created_at"]
    ordering = ["id"]

    def base_queryset(self) -> models.QuerySet[AdmissionPolicy]:
        return AdmissionPolicy.objects.select_related("tenant")
