"""Catalog endpoints."""

from __future__ import annotations

from django.db import models

from meshweb.catalog.api.serializers import DeploymentSerializer, ModelRevisionSerializer, ModelSerializer
from meshweb.catalog.models import Deployment, Model, ModelRevision
from meshweb.tenancy.roles import Role
from meshweb.tenancy.scoped.views import ScopedModelViewSet


class ModelViewSet(ScopedModelViewSet):
    serializer_class = ModelSerializer
    write_role = Role.OPERATOR
    filterset_fields = ["name", "tenant__slug"]
    ordering_fields = ["name", "created_at"]
    ordering = ["name", "id"]

    def base_queryset(self) -> models.QuerySet[Model]:
        return Model.objects.select_related("tenant")


class ModelRevisionViewSet(ScopedModelViewSet):
    serializer_class = ModelRevisionSerializer
    write_role = Role.OPERATOR
    filterset_fields = ["model", "runtime", "quant"]
    ordering_fields = ["revision", "created_at"]
    ordering = ["model_id", "revision"]

    def base_queryset(self) -> models.QuerySet[ModelRevision]:
        return ModelRevision.objects.all()


class DeploymentViewSet(ScopedModelViewSet):
    serializer_class = DeploymentSerializer
    write_role = Role.OPERATOR
    filterset_fields = ["revision", "gpu_type"]
    ordering_fields = ["created_at", "id"]
    ordering = ["id"]

    def base_queryset(self) -> models.QuerySet[Deployment]:
        return Deployment.objects.select_related("zone")
