"""Policy endpoints."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from rest_framework import exceptions
from rest_framework.response import Response

from meshweb.policy.api.serializers import (
    AdmissionPolicySerializer,
    RoutingPolicySerializer,
    SloSerializer,
    StrategyModuleSerializer,
)
from meshweb.policy.models import AdmissionPolicy, RoutingPolicy, Slo, StrategyModule
from meshweb.tenancy.roles import Role
from meshweb.tenancy.scoped.views import ScopedModelViewSet


class SloViewSet(ScopedModelViewSet):
    serializer_class = SloSerializer
    write_role = Role.OPERATOR
    filterset_fields = ["model", "tenant__slug"]
    ordering_fields = ["id", "created_at"]
    ordering = ["id"]

    def base_queryset(self) -> models.QuerySet[Slo]:
        return Slo.objects.select_related("tenant")


class RoutingPolicyViewSet(ScopedModelViewSet):
    """Routing policies: a policy that cannot be applied (unknown model, strategy, node or zone, an A/B split not
    adding up to 100) is refused whole with 422 naming each field."""

    serializer_class = RoutingPolicySerializer
    write_role = Role.OPERATOR
    filterset_fields = ["model", "strategy", "tenant__slug"]
    ordering_fields = ["id", "created_at"]
    ordering = ["id"]

    def base_queryset(self) -> models.QuerySet[RoutingPolicy]:
        return RoutingPolicy.objects.select_related("tenant")

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, DjangoValidationError):
            exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
        response = super().handle_exception(exc)
        if isinstance(exc, exceptions.ValidationError):
            response.status_code = 422
            if isinstance(response.data, dict) and isinstance(response.data.get("error"), dict):
                response.data["error"]["status"] = 422
        return response


class AdmissionPolicyViewSet(ScopedModelViewSet):
    serializer_class = AdmissionPolicySerializer
    write_role = Role.OPERATOR
    filterset_fields = ["model", "tenant__slug"]
    ordering_fields = ["id", "created_at"]
    ordering = ["id"]

    def base_queryset(self) -> models.QuerySet[AdmissionPolicy]:
        return AdmissionPolicy.objects.select_related("tenant")


class StrategyModuleViewSet(RoutingPolicyViewSet):
    """WebAssembly strategy modules: a module that would be refused at load (no required export, wrong ABI version,
    imports, over the size limit) or whose checksum is not the one given is refused with 422 naming the problem.
    A routing policy names one as `module:<sha256>`; agents' stores carry it to routers."""

    serializer_class = StrategyModuleSerializer  # type: ignore[assignment]
    filterset_fields = ["tenant__slug", "sha256", "name"]
    http_method_names = ["get", "post", "delete", "head", "options"]

    def base_queryset(self) -> models.QuerySet[StrategyModule]:  # type: ignore[override]
        return StrategyModule.objects.select_related("tenant").defer("wasm")
