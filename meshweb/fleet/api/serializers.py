"""Serializers of the fleet."""

from __future__ import annotations

from rest_framework import serializers

from meshweb.core.api.serializers import StrictModelSerializer, StrictSerializer
from meshweb.fleet.models import Cell, Gpu, Node, NodeRole, NodeStatus, Region, Zone


class RegionSerializer(StrictModelSerializer):
    class Meta:
        model = Region
        fields = ["id", "name", "created_at"]
        read_only_fields = ["id", "created_at"]


class ZoneSerializer(StrictModelSerializer):
    region = serializers.SlugRelatedField(slug_field="name", queryset=Region.objects.all())

    class Meta:
        model = Zone
        fields = ["id", "name", "region", "created_at"]
        read_only_fields = ["id", "created_at"]


class CellSerializer(StrictModelSerializer):
    zone = serializers.SlugRelatedField(slug_field="name", queryset=Zone.objects.all())

    class Meta:
        model = Cell
        fields = ["id", "name", "zone", "created_at"]
        read_only_fields = ["id", "created_at"]


class NodeSerializer(StrictModelSerializer):
    zone = serializers.SlugRelatedField(slug_field="name", queryset=Zone.objects.all())
    roles = serializers.ListField(child=serializers.ChoiceField(choices=NodeRole.choices), max_length=5)
    labels = serializers.DictField(child=serializers.CharField(max_length=200), default=dict)
    gpu_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Node
        fields = [
            "id",
            "name",
            "address",
            "zone",
            "cell",
            "roles",
            "labels",
            "status",
            "status_reason",
            "status_changed_at",
            "last_heartbeat_at",
            "gpu_count",
            "created_at",
        ]
        read_only_fields = ["id", "status", "status_reason", "status_changed_at", "last_heartbeat_at", "created_at"]

    def validate_roles(self, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("Roles must not repeat.")
        return value


class NodeStatusSerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=NodeStatus.choices)
    reason = serializers.CharField(max_length=500, allow_blank=True, default="")


class GpuSerializer(StrictModelSerializer):
    node = serializers.SlugRelatedField(slug_field="name", queryset=Node.objects.all())

    class Meta:
        model = Gpu
        fields = ["id", "node", "uuid", "index", "model", "gpu_type", "vram_mb", "mig_profile", "parent_uuid"]
        read_only_fields = ["id"]
