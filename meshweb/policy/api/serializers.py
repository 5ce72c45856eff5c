"""Serializers of SLOs, routing and admission policies."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from meshweb.catalog.api.serializers import TenantImmutableMixin
from meshweb.catalog.models import Model
from meshweb.core.api.fields import ScopedPrimaryKeyRelatedField, tenant_field
from meshweb.core.api.serializers import StrictModelSerializer
from meshweb.policy.models import AdmissionPolicy, RoutingPolicy, Slo, Strategy
from meshweb.policy.rules import check_routing_policy


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
    # Plain fields here: meshweb.policy.rules checks names and shares and says what it knows instead.
    strategy = serializers.CharField(max_length=32, default=Strategy.HYBRID_MESH)
    shadow_strategy = serializers.CharField(max_length=32, allow_blank=True, default="")
    ab_split = serializers.DictField(default=dict, help_text="strategy -> percent of requests, adding up to 100")
    pin_nodes = serializers.ListField(child=serializers.CharField(max_length=63), default=list)
    pin_zones = serializers.ListField(child=serializers.CharField(max_length=63), default=list)

    class Meta:
        model = RoutingPolicy
        fields = [
            "id",
            "tenant",
            "model",
            "strategy",
            "params",
            "ab_split",
            "shadow_strategy",
            "hedging",
            "pin_nodes",
            "pin_zones",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        merged = {
            f: attrs.get(f, getattr(self.instance, f, None))
            for f in ("strategy", "shadow_strategy", "ab_split", "pin_nodes", "pin_zones")
        }
        problems = check_routing_policy(merged)
        if problems:
            raise serializers.ValidationError(problems)
        return attrs


class AdmissionPolicySerializer(_ModelOfTenantMixin, StrictModelSerializer):
    tenant = tenant_field()
    model = ScopedPrimaryKeyRelatedField(queryset=Model.objects.all(), allow_null=True, default=None)

    class Meta:
        model = AdmissionPolicy
        fields = ["id", "tenant", "model", "max_queue_depth", "max_kv_usage", "retry_after_s", "created_at"]
        read_only_fields = ["id", "created_at"]
