"""Tenancy endpoints."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import models
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from meshweb.tenancy.api.serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenCreateSerializer,
    ApiTokenSerializer,
    InferenceKeyCreatedSerializer,
    InferenceKeyCreateSerializer,
    InferenceKeySerializer,
    MembershipSerializer,
    QuotaSerializer,
    TenantSerializer,
)
from meshweb.tenancy.models import ApiToken, InferenceKey, Membership, Quota, Tenant
from meshweb.tenancy.roles import Role
from meshweb.tenancy.scoped.views import ScopedModelViewSet, ScopedUpdateViewSet
from meshweb.tenancy.services import (
    KEY_LIMITS,
    inference_key_create,
    inference_key_revoke,
    membership_set,
    tenant_create,
    token_create,
    token_revoke,
)


class TenantViewSet(ScopedModelViewSet):
    serializer_class = TenantSerializer
    write_role = Role.PLATFORM_ADMIN
    filterset_fields = ["slug", "is_active"]
    ordering_fields = ["slug", "created_at"]
    ordering = ["slug"]

    def base_queryset(self) -> models.QuerySet[Tenant]:
        return Tenant.objects.all()

    def perform_create(self, serializer: Any) -> None:
        data = serializer.validated_data
        serializer.instance = tenant_create(
            principal=self.principal, slug=data["slug"], name=data.get("name", ""), regions=data.get("regions")
        )


class QuotaViewSet(ScopedUpdateViewSet):
    serializer_class = QuotaSerializer
    write_role = Role.PLATFORM_ADMIN
    filterset_fields = ["tenant__slug"]
    ordering_fields = ["id"]
    ordering = ["tenant__slug"]

    def base_queryset(self) -> models.QuerySet[Quota]:
        return Quota.objects.select_related("tenant")


class MembershipViewSet(ScopedModelViewSet):
    serializer_class = MembershipSerializer
    read_role = Role.TENANT_ADMIN
    write_role = Role.TENANT_ADMIN
    filterset_fields = ["role", "tenant__slug"]
    ordering_fields = ["id", "created_at"]
    ordering = ["id"]

    def base_queryset(self) -> models.QuerySet[Membership]:
        return Membership.objects.select_related("tenant", "user")

    def perform_create(self, serializer: Any) -> None:
        data = serializer.validated_data
        serializer.instance = membership_set(
            principal=self.principal, tenant=data["tenant"], user=data["user"], role=data["role"]
        )


class ApiTokenViewSet(ScopedModelViewSet):
    read_role = Role.TENANT_ADMIN
    write_role = Role.TENANT_ADMIN
    http_method_names = ["get", "post", "delete", "head", "options"]
    filterset_fields = ["role", "tenant__slug"]
    ordering_fields = ["id", "created_at", "expires_at"]
    ordering = ["id"]

    def base_queryset(self) -> models.QuerySet[ApiToken]:
        return ApiToken.objects.select_related("tenant")

    def get_serializer_class(self) -> type[Any]:
        return ApiTokenCreateSerializer if self.action == "create" else ApiTokenSerializer

    @extend_schema(request=ApiTokenCreateSerializer, responses={201: ApiTokenCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = ApiTokenCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        token, plaintext = token_create(
            principal=self.principal,
            tenant=data["tenant"],
            role=data["role"],
            name=data["name"],
            expires_in=timedelta(days=data["expires_in_days"]),
        )
        body = ApiTokenSerializer(token).data | {"token": plaintext}
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: models.Model) -> None:
        assert isinstance(instance, ApiToken)
        token_revoke(principal=self.principal, token=instance)


class InferenceKeyViewSet(ScopedModelViewSet):
    """Keys for the inference API at the routers. DELETE revokes (the row stays for the audit trail)."""

    read_role = Role.MEMBER
    write_role = Role.TENANT_ADMIN
    http_method_names = ["get", "post", "delete", "head", "options"]
    filterset_fields = ["tenant__slug"]
    ordering_fields = ["id", "created_at", "expires_at"]
    ordering = ["id"]

    def base_queryset(self) -> models.QuerySet[InferenceKey]:
        return InferenceKey.objects.select_related("tenant")

    def get_serializer_class(self) -> type[Any]:
        return InferenceKeyCreateSerializer if self.action == "create" else InferenceKeySerializer

    @extend_schema(request=InferenceKeyCreateSerializer, responses={201: InferenceKeyCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = InferenceKeyCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        key, plaintext = inference_key_create(
            principal=self.principal,
            tenant=data["tenant"],
            name=data["name"],
            model_names=data["models"],
            expires_at=data.get("expires_at"),
            limits={k: data[k] for k in KEY_LIMITS if data.get(k) is not None},
        )
        body = InferenceKeySerializer(key).data | {"key": plaintext}
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: models.Model) -> None:
        assert isinstance(instance, InferenceKey)
        inference_key_revoke(principal=self.principal, key=instance)
