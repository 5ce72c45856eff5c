"""Mesh identity endpoints: join tokens (platform admins), node enrollment and renewal (authenticated by the join
token or the current certificate, not by a user), the CRL, and the node API's certificate side (deleting a node
revokes its certificates; revoking them on demand)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import models
from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from meshweb.core.api.serializers import StrictSerializer
from meshweb.fleet.api.views import NodeViewSet as FleetNodeViewSet
from meshweb.fleet.models import Node
from meshweb.identity.mesh import (
    CaUnavailable,
    EnrollmentRefused,
    crl_pem,
    join_token_create,
    node_certificates_revoke,
    node_delete,
    node_enroll,
    node_renew,
)
from meshweb.tenancy.permissions import principal_of


class Refused(exceptions.APIException):
    status_code: int = status.HTTP_403_FORBIDDEN
    default_code = "enrollment_refused"

    def __init__(self, err: EnrollmentRefused) -> None:
        super().__init__(str(err), "malformed" if err.status == 400 else "enrollment_refused")
        self.status_code = err.status


class JoinTokenRequestSerializer(serializers.Serializer):  # type: ignore[type-arg]
    node = serializers.SlugRelatedField(slug_field="name", queryset=Node.objects.all())
    ttl_s = serializers.IntegerField(min_value=60, max_value=7 * 86400, default=900)


class JoinTokenSerializer(serializers.Serializer):  # type: ignore[type-arg]
    token = serializers.CharField(help_text="imj_<prefix>_<secret>; shown once")
    node = serializers.CharField()
    prefix = serializers.CharField()
    expires_at = serializers.DateTimeField()


class EnrollRequestSerializer(serializers.Serializer):  # type: ignore[type-arg]
    token = serializers.CharField(max_length=200)
    csr = serializers.CharField(max_length=65536, help_text="PEM PKCS#10 request, ECDSA P-256/P-384 key")
    hosts = serializers.ListField(child=serializers.CharField(max_length=253), max_length=16, default=list)


class RenewRequestSerializer(serializers.Serializer):  # type: ignore[type-arg]
    certificate = serializers.CharField(max_length=65536, trim_whitespace=False)
    csr = serializers.CharField(max_length=65536, trim_whitespace=False, help_text="PEM; signed byte for byte")
    signature = serializers.CharField(max_length=1024, help_text="base64 ECDSA-SHA256 of the CSR by the current key")


class SvidSerializer(serializers.Serializer):  # type: ignore[type-arg]
    certificate = serializers.CharField()
    ca = serializers.CharField()
    trust_domain = serializers.CharField()
    spiffe_id = serializers.CharField()
    roles = serializers.ListField(child=serializers.CharField())
    serial = serializers.CharField()
    not_after = serializers.DateTimeField()


class JoinTokenView(APIView):
    """Create a one-time join token for a node (platform admins)."""

    @extend_schema(
        request=JoinTokenRequestSerializer, responses={201: JoinTokenSerializer}, operation_id="join_tokens_create"
    )
    def post(self, request: Request) -> Response:
        principal = principal_of(request)
        if not principal.platform_admin:
            raise exceptions.PermissionDenied("Only platform admins create join tokens.")
        body = JoinTokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        node = body.validated_data["node"]
        token, plaintext = join_token_create(
            principal=principal, node=node, ttl=timedelta(seconds=body.validated_data["ttl_s"])
        )
        data = {"token": plaintext, "node": node.name, "prefix": token.prefix, "expires_at": token.expires_at}
        return Response(JoinTokenSerializer(data).data, status=status.HTTP_201_CREATED)


def _peer(request: Request) -> str:
    return str(request.META.get("REMOTE_ADDR", ""))


class EnrollView(APIView):
    """Exchange a join token and a CSR for the node's first SVID."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(request=EnrollRequestSerializer, responses={200: SvidSerializer}, auth=[], operation_id="enroll")
    def post(self, request: Request) -> Response:
        body = EnrollRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            data = node_enroll(
                token=body.validated_data["token"],
                csr=body.validated_data["csr"],
                peer=_peer(request),
                hosts=body.validated_data["hosts"],
            )
        except EnrollmentRefused as err:
            raise Refused(err) from None
        return Response(SvidSerializer(data).data)


class RenewView(APIView):
    """A fresh SVID for a node that proves it holds a current one (rotation before expiry)."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=RenewRequestSerializer, responses={200: SvidSerializer}, auth=[], operation_id="enroll_renew"
    )
    def post(self, request: Request) -> Response:
        body = RenewRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            data = node_renew(peer=_peer(request), **body.validated_data)
        except EnrollmentRefused as err:
            raise Refused(err) from None
        return Response(SvidSerializer(data).data)


def crl_view(request: HttpRequest) -> HttpResponse:
    """The mesh CA's CRL (PEM); public, as CRLs are signed by the CA."""
    try:
        return HttpResponse(crl_pem(), content_type="application/pkix-crl")
    except CaUnavailable as err:
        return HttpResponse(str(err.detail), status=err.status_code, content_type="text/plain")


class RevokeCertificatesSerializer(StrictSerializer):
    reason = serializers.CharField(max_length=200)


class RevokedCertificatesSerializer(serializers.Serializer):  # type: ignore[type-arg]
    revoked = serializers.ListField(child=serializers.CharField(), help_text="serials (hex) revoked now")


class NodeViewSet(FleetNodeViewSet):
    """The fleet's node API (served at /api/v1/nodes/) with what identity adds: certificates follow their node."""

    def perform_destroy(self, instance: models.Model) -> None:
        # A deleted node's certificates are revoked in the same transaction (published in the mesh CRL).
        assert isinstance(instance, Node)
        node_delete(principal=self.principal, node=instance)

    @extend_schema(request=RevokeCertificatesSerializer, responses={200: RevokedCertificatesSerializer})
    @action(detail=True, methods=["post"], url_path="revoke-certificates")
    def revoke_certificates(self, request: Request, pk: Any = None) -> Response:
        """Revoke every current SVID of the node: published in the mesh CRL, refused by every agent's gRPC services
        within their CRL refresh, and its live portal link is ended at the next check."""
        node = self.get_object()
        body = RevokeCertificatesSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        serials = node_certificates_revoke(
            principal=self.principal, node_name=node.name, reason=body.validated_data["reason"]
        )
        return Response({"revoked": serials})
