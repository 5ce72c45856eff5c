"""Fleet endpoints; writes are for platform admins."""

from __future__ import annotations

from typing import Any

from django.db import models
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from meshweb.fleet.api.serializers import (
    CellSerializer,
    GpuSerializer,
    NodeSerializer,
    NodeStatusSerializer,
    RegionSerializer,
    ZoneSerializer,
)
from meshweb.fleet.models import Cell, Gpu, Node, Region, Zone
from meshweb.fleet.services import node_set_status
from meshweb.tenancy.roles import Role
from meshweb.tenancy.scoped.views import ScopedModelViewSet


class RegionViewSet(ScopedModelViewSet):
    serializer_class = RegionSerializer
    write_role = Role.PLATFORM_ADMIN
    filterset_fields = ["name"]
    ordering_fields = ["name"]
    ordering = ["name"]

    def base_queryset(self) -> models.QuerySet[Region]:
        return Region.objects.all()


class ZoneViewSet(ScopedModelViewSet):
    serializer_class = ZoneSerializer
    write_role = Role.PLATFORM_ADMIN
    filterset_fields = ["name", "region__name"]
    ordering_fields = ["name"]
    ordering = ["name"]

    def base_queryset(self) -> models.QuerySet[Zone]:
        return Zone.objects.select_related("region")


class CellViewSet(ScopedModelViewSet):
    serializer_class = CellSerializer
    write_role = Role.PLATFORM_ADMIN
    filterset_fields = ["name", "zone__name"]
    ordering_fields = ["name"]
    ordering = ["zone_id", "name"]

    def base_queryset(self) -> models.QuerySet[Cell]:
        return Cell.objects.select_related("zone")


class NodeViewSet(ScopedModelViewSet):
    """Nodes; served as meshweb.identity.api.NodeViewSet, which adds the certificates (identity stacks above)."""

    serializer_class = NodeSerializer
    write_role = Role.PLATFORM_ADMIN
    filterset_fields = ["status", "zone__name", "name"]
    ordering_fields = ["name", "status", "created_at"]
    ordering = ["name"]

    def base_queryset(self) -> models.QuerySet[Node]:
        return Node.objects.select_related("zone").annotate(gpu_count=models.Count("gpus"))

    @extend_schema(request=NodeStatusSerializer, responses={200: NodeSerializer})
    @action(detail=True, methods=["post"])
    def status(self, request: Request, pk: Any = None) -> Response:
        """Move the node along its lifecycle (cordon, drain, quarantine, activate, offline)."""
        node = self.get_object()
        body = NodeStatusSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        node_set_status(
            principal=self.principal,
            node=node,
            status=body.validated_data["status"],
            reason=body.validated_data["reason"],
        )
        return Response(NodeSerializer(self.get_queryset().get(pk=node.pk)).data)


class GpuViewSet(ScopedModelViewSet):
    serializer_class = GpuSerializer
    write_role = Role.PLATFORM_ADMIN
    filterset_fields = ["node__name", "gpu_type", "mig_profile"]
    ordering_fields = ["index", "uuid"]
    ordering = ["node_id", "index", "uuid"]

    def base_queryset(self) -> models.QuerySet[Gpu]:
        return Gpu.objects.select_related("node")
