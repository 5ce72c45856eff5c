"""Serializers of models, revisions and deployments."""

from __future__ import annotations

import re
from typing import Any

from rest_framework import serializers

from agents.proto.vocab import MIG_PROFILES
from meshweb.catalog.models import Deployment, Model, ModelRevision, model_name_validator
from meshweb.core.api.serializers import StrictModelSerializer
from meshweb.fleet.mig import require_mig_slices
from meshweb.fleet.models import GpuType, Zone
from meshweb.tenancy.scoped.fields import ScopedPrimaryKeyRelatedField, tenant_field

_ARTIFACT = re.compile(r"^(s3|gs|az|hf|nfs|file|oci|https?)://\S+$")


class TenantImmutableMixin:
    def validate_tenant(self, value: Any) -> Any:
        instance = getattr(self, "instance", None)
        if instance is not None and instance.tenant_id != value.pk:
            raise serializers.ValidationError("The tenant of an existing object cannot change.")
        return value


class ModelSerializer(TenantImmutableMixin, StrictModelSerializer):
    tenant = tenant_field()
    aliases = serializers.ListField(
        child=serializers.CharField(max_length=128, validators=[model_name_validator]),
        default=list,
        max_length=32,
        help_text="other names the tenant may use for this model at the router",
    )

    class Meta:
        model = Model
        fields = ["id", "tenant", "name", "aliases", "description", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # A name resolves to one model per tenant: aliases may not repeat the model's names or another's.
        tenant = attrs.get("tenant", getattr(self.instance, "tenant", None))
        name = attrs.get("name", getattr(self.instance, "name", ""))
        aliases = attrs.get("aliases", getattr(self.instance, "aliases", []))
        if len(set(aliases)) != len(aliases) or name in aliases:
            raise serializers.ValidationError({"aliases": ["Aliases must differ from each other and the name."]})
        if tenant is not None:
            others = Model.objects.filter(tenant=tenant)
            if self.instance is not None:
                others = others.exclude(pk=self.instance.pk)
            taken: set[str] = set()
            for other_name, other_aliases in others.values_list("name", "aliases"):
                taken.add(other_name)
                taken.update(other_aliases or [])
            clash = sorted(taken & ({name} | set(aliases)) - {name}) if name not in taken else [name]
            if clash:
                raise serializers.ValidationError(
                    {"aliases": [f"Already a name or alias of another model of this tenant: {', '.join(clash)}."]}
                )
        return attrs


class ModelRevisionSerializer(StrictModelSerializer):
    model = ScopedPrimaryKeyRelatedField(queryset=Model.objects.all())

    class Meta:
        model = ModelRevision
        fields = ["id", "model", "revision", "quant", "runtime", "artifact_uri", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_artifact_uri(self, value: str) -> str:
        if not _ARTIFACT.match(value):
            raise serializers.ValidationError("Use a URI with a scheme: s3://, gs://, az://, hf://, oci://, https://.")
        return value


class DeploymentSerializer(StrictModelSerializer):
    revision = ScopedPrimaryKeyRelatedField(queryset=ModelRevision.objects.all())
    zone = serializers.SlugRelatedField(slug_field="name", queryset=Zone.objects.all(), allow_null=True, default=None)
    gpu_type = serializers.ChoiceField(choices=GpuType.choices, allow_blank=True, default="")
    mig_profile = serializers.ChoiceField(
        choices=list(MIG_PROFILES),
        allow_blank=True,
        default="",
        error_messages={"invalid_choice": f'Unknown MIG profile "{{input}}"; known: {", ".join(MIG_PROFILES)}.'},
    )
    node_selector = serializers.DictField(child=serializers.CharField(max_length=200), default=dict)

    class Meta:
        model = Deployment
        fields = [
            "id",
            "revision",
            "zone",
            "node_selector",
            "gpu_type",
            "mig_profile",
            "min_replicas",
            "max_replicas",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        lo = attrs.get("min_replicas", getattr(self.instance, "min_replicas", 1))
        hi = attrs.get("max_replicas", getattr(self.instance, "max_replicas", 1))
        if lo > hi:
            raise serializers.ValidationError({"min_replicas": [f"min_replicas ({lo}) exceeds max_replicas ({hi})."]})
        profile = attrs.get("mig_profile", getattr(self.instance, "mig_profile", ""))
        if profile:  # replicas the fleet's MIG layout could never hold are refused now, not left unserved
            family = attrs.get("gpu_type", getattr(self.instance, "gpu_type", ""))
            require_mig_slices(profile, lo, {family} if family else set(), "the deployment", "replicas")
        return attrs
