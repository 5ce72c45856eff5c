"""Serializers of tenants, quotas, memberships and tokens."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from rest_framework import serializers

from agents.proto import access
from meshweb.core.api.serializers import StrictModelSerializer, StrictSerializer
from meshweb.tenancy.models import ApiToken, InferenceKey, Membership, Quota, Tenant
from meshweb.tenancy.roles import Role
from meshweb.tenancy.scoped.fields import tenant_field


class TenantSerializer(StrictModelSerializer):
    class Meta:
        model = Tenant
        fields = ["id", "slug", "name", "is_active", "regions", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class QuotaSerializer(StrictModelSerializer):
    tenant: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Quota
        fields = [
            "id",
            "tenant",
            "gpus_max",
            "gpu_hours_per_period",
            "period_days",
            "concurrent_jobs_max",
            "requests_per_s",
            "tokens_per_min",
            "concurrent_requests_max",
            "tokens_per_day",
            "priority",
            "updated_at",
        ]
        read_only_fields = ["id", "tenant", "updated_at"]


class MembershipSerializer(StrictModelSerializer):
    tenant = tenant_field()
    username: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        source="user", slug_field="username", queryset=get_user_model().objects.all()
    )

    class Meta:
        model = Membership
        fields = ["id", "tenant", "username", "role", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_role(self, value: str) -> str:
        principal = self.context["request"].user
        if value == Role.PLATFORM_ADMIN and not principal.platform_admin:
            raise serializers.ValidationError("Only platform admins can grant platform_admin.")
        return value


class ApiTokenSerializer(StrictModelSerializer):
    tenant: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "tenant", "role", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]
        read_only_fields = fields


class ApiTokenCreateSerializer(StrictSerializer):
    tenant = tenant_field()
    role = serializers.ChoiceField(choices=Role.choices)
    name = serializers.CharField(max_length=100, allow_blank=True, default="")
    expires_in_days = serializers.IntegerField(min_value=1, max_value=3650, default=90)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        principal = self.context["request"].user
        if not principal.can(attrs["tenant"].pk, attrs["role"]):
            raise serializers.ValidationError({"role": ["You cannot issue a token with a role above your own."]})
        return attrs


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The secret; shown only in this response.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class InferenceKeySerializer(StrictModelSerializer):
    tenant: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    models = serializers.ListField(source="model_names", child=serializers.CharField(), read_only=True)

    class Meta:
        model = InferenceKey
        fields = [
            "id",
            "tenant",
            "name",
            "prefix",
            "models",
            "expires_at",
            "revoked_at",
            "requests_per_s",
            "tokens_per_min",
            "concurrent_requests_max",
            "tokens_per_day",
            "created_at",
        ]
        read_only_fields = fields


class InferenceKeyCreateSerializer(StrictSerializer):
    """Bounds are checked here so that a bad request names its field and nothing is written."""

    tenant = tenant_field()
    name = serializers.CharField(max_length=100, allow_blank=True, default="")
    models = serializers.ListField(
        child=serializers.CharField(max_length=128), default=list, max_length=256, help_text="empty = every model"
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    requests_per_s = serializers.FloatField(
        required=False, allow_null=True, min_value=0.001, max_value=access.MAX_REQUESTS_PER_S
    )
    tokens_per_min = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=2_147_483_647)
    concurrent_requests_max = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=access.MAX_CONCURRENT
    )
    tokens_per_day = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=access.MAX_TOKENS_PER_DAY
    )


class InferenceKeyCreatedSerializer(InferenceKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The secret; shown only in this response.")

    class Meta(InferenceKeySerializer.Meta):
        fields = [*InferenceKeySerializer.Meta.fields, "key"]
        read_only_fields = fields
