"""Serializers of SLOs, routing and admission policies."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from meshweb.catalog.api.serializers import TenantImmutableMixin
from meshweb.catalog.models import Model
from meshweb.core.api.serializers import StrictModelSerializer
from meshweb.policy.models import MAX_MODULE_BYTES, AdmissionPolicy, RoutingPolicy, Slo, Strategy, StrategyModule
from meshweb.policy.rules import check_routing_policy
from meshweb.tenancy.scoped.fields import ScopedPrimaryKeyRelatedField, tenant_field


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
    strategy = serializers.CharField(max_length=80, default=Strategy.HYBRID_MESH)
    shadow_strategy = serializers.CharField(max_length=80, allow_blank=True, default="")
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
            for f in ("strategy", "shadow_strategy", "ab_split", "pin_nodes", "pin_zones", "params")
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


class StrategyModuleSerializer(TenantImmutableMixin, StrictModelSerializer):
    """Upload: `wasm` is the module in base64; `sha256`, when given, pins what the uploader built (a mismatch is
    refused). The module is checked as a router would load it (exports, no imports, ABI version, size)."""

    tenant = tenant_field()
    wasm = serializers.CharField(write_only=True, help_text="the WebAssembly module, base64")
    sha256 = serializers.CharField(required=False, max_length=64, help_text="expected SHA-256 (hex) of the module")
    strategy = serializers.CharField(read_only=True, help_text="what a routing policy names: module:<sha256>")

    class Meta:
        model = StrategyModule
        fields = ["id", "tenant", "name", "wasm", "sha256", "size", "strategy", "created_at"]
        read_only_fields = ["id", "size", "strategy", "created_at"]
        validators: list[Any] = []  # a second upload of the same module is refused in validate(), by name

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        import base64
        import binascii
        import hashlib

        from agents.strategies.wasm import WasmLoadError, check_module

        attrs = super().validate(attrs)
        if self.instance is not None and ("wasm" in attrs or "sha256" in attrs):
            raise serializers.ValidationError({"wasm": ["A module's code is fixed; upload a new module instead."]})
        if self.instance is not None:
            return attrs
        try:
            data = base64.b64decode(str(attrs.get("wasm", "")), validate=True)
        except (binascii.Error, ValueError):
            raise serializers.ValidationError({"wasm": ["Give the module in base64."]}) from None
        actual = hashlib.sha256(data).hexdigest()
        pinned = attrs.get("sha256")
        if pinned is not None and pinned.lower() != actual:
            raise serializers.ValidationError(
                {"sha256": [f"Checksum mismatch: the upload's SHA-256 is {actual}, not {pinned}."]}
            )
        try:
            check_module(data, MAX_MODULE_BYTES)
        except WasmLoadError as exc:
            raise serializers.ValidationError({"wasm": [f"Refused: {exc}."]}) from None
        tenant = attrs.get("tenant")
        if tenant is not None and StrategyModule.objects.filter(tenant=tenant, sha256=actual).exists():
            raise serializers.ValidationError({"wasm": [f"This module is already uploaded (module:{actual})."]})
        attrs.update(wasm=data, sha256=actual, size=len(data))
        return attrs
