"""Serializers of SLOs, routing and admission policies."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from meshweb.catalog.api.serializers import TenantImmutableMixin
from meshweb.catalog.models import Model
from meshweb.core.api.fields import ScopedPrimaryKeyRelatedField, tenant_field
from meshweb.core.api.serializers import StrictModelSerializer
from meshweb.policy.models import AdmissionPolicy, RoutingPolicy, Slo


class _ModelOfTenantMixin(TenantImmutableMixin):
    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        tenant = attrs.get("tenant", getattr(getattr(self, "instance", None), "tenant", None))
        model = attrs.get("model")
        if model is not None and tenant is not None and model.tenant_id != tenant.pk:
            raise serializers.ValidationError({"model": ["The model belongs to another tenant."]})
        return attrs


class SloSerializer(_ModelOfTenantMixin, StrictModelSerializer):
    tenant = tenant_field()
    model = ScopedPrimaryKeyRelatedField(queryset=Model.objects.all(), allow_null=True, default=None)

    class Meta:
        model = Slo
        fields = ["id", "tenant", "model", "ttft_p99_ms", "latency_p99_ms", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class RoutingPolicySerializer(_ModelOfTenantMixin, StrictModelSerializer):
    tenant = tenant_field()
    model = ScopedPrimaryKeyRelatedField(queryset=Model.objects.all())
    params = serializers.DictField(default=dict)

    class Meta:
        model = RoutingPolicy
        fields = [
            "id",
            "tenant",
            "model",
            "strategy",
            "params",
            "ab_strategy",
            "ab_split",
            "shadow_strategy",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        split = attrs.get("ab_split", getattr(self.instance, "ab_split", 0.0))
        ab = attrs.get("ab_strategy", getattr(self.instance, "ab_strategy", ""))
        if split > 0 and not ab:
            raise serializers.ValidationError({"ab_strategy": ["An A/B split needs an ab_strategy."]})
        return attrs


class AdmissionPolicySerializer(_ModelOfTenantMixin, StrictModelSerializer):
    tenant = tenant_field()
    model = ScopedPrimaryKeyRelatedField(queryset=Model.objects.all(), allow_null=True, default=None)

    class Meta:
        model = AdmissionPolicy
        fields = ["id", "tenant", "model", "max_queue_depth", "max_kv_usage", "retry_after_s", "created_at"]
        read_only_fields = ["id", "created_at"]
