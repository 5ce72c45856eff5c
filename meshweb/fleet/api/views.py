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
    RevokeCertificatesSerializer,
    RevokedCertificatesSerializer,
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
    serializer_class = NodeSerializer
    write_role = Role.PLATFORM_ADMIN
    filterset_fields = ["status", "zone__name", "name"]
    ordering_fields = ["name", "status", "created_at"]
    ordering = ["name"]

    def base_queryset(self) -> models.QuerySet[Node]:
        return Node.objects.select_related("zone").annotate(gpu_count=models.Count("gpus"))

    def perform_destroy(self, instance: models.Model) -> None:
        # A deleted node's certificates are revoked in the same transaction (published in the mesh CRL).
        from meshweb.identity.mesh import node_delete

        assert isinstance(instance, Node)
        node_delete(principal=self.principal, node=instance)

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

    @extend_schema(request=RevokeCertificatesSerializer, responses={200: RevokedCertificatesSerializer})
    @action(detail=True, methods=["post"], url_path="revoke-certificates")
    def revoke_certificates(self, request: Request, pk: Any = None) -> Response:
        """Revoke every current SVID of the node: published in the mesh CRL, refused by every agent's gRPC services
        within their CRL refresh, and its live portal link is ended at the next check."""
        from meshweb.identity.mesh import node_certificates_revoke

        node = self.get_object()
        body = RevokeCertificatesSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        serials = node_certificates_revoke(
            principal=self.principal, node_name=node.name, reason=body.validated_data["reason"]
        )
        return Response({"revoked": serials})


class GpuViewSet(ScopedModelViewSet):
    serializer_class = GpuSerializer
    write_role = Role.PLATFORM_ADMIN
    filterset_fields = ["node__name", "gpu_type", "mig_profile"]
    ordering_fields = ["index", "uuid"]
    ordering = ["node_id", "index", "uuid"]

    def base_queryset(self) -> models.QuerySet[Gpu]:
        return Gpu.objects.select_related("node")
