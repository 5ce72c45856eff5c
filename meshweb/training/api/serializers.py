"""Serializers of training jobs."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from meshweb.core.api.serializers import StrictSerializer
from meshweb.tenancy.scoped.fields import tenant_field
from meshweb.training.models import JobEvent, JobPlacement, JobTelemetry, TrainingJob
from meshweb.training.spec import JobSpecSerializer


class JobEnvelopeSerializer(StrictSerializer):
    """The submission around the spec; the spec itself is validated once, by the job_submit service."""

    tenant = tenant_field()
    name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", max_length=128)
    priority = serializers.IntegerField(min_value=0, max_value=1000, default=50)
    spec = serializers.JSONField()


class JobSubmitSerializer(JobEnvelopeSerializer):
    """What the API documents for a submission."""

    spec = JobSpecSerializer()  # type: ignore[assignment]


class JobPlacementSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    node: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = JobPlacement
        fields = ["rank", "node", "gpu_uuids"]
        read_only_fields = fields


class JobSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    tenant: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    spec = JobSpecSerializer(read_only=True)
    placements = JobPlacementSerializer(many=True, read_only=True)

    class Meta:
        model = TrainingJob
        fields = [
            "id",
            "tenant",
            "name",
            "priority",
            "status",
            "status_reason",
            "workers",
            "gpus_per_worker",
            "spec",
            "placements",
            "submitted_by",
            "created_at",
            "updated_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class JobEventSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = JobEvent
        fields = ["id", "at", "kind", "message", "data"]
        read_only_fields = fields


class JobCancelSerializer(StrictSerializer):
    reason = serializers.CharField(max_length=500, allow_blank=True, default="")


class JobScaleSerializer(StrictSerializer):
    workers = serializers.IntegerField(min_value=1)


class JobTelemetrySerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """The job's latest telemetry roll-up: per node steps, step time and all-reduce bytes / time / busbw, and the
    plan's predicted step time and bus bandwidth."""

    job = serializers.IntegerField(source="job_id", read_only=True)
    at = serializers.DateTimeField(read_only=True, allow_null=True)  # null until the first report

    class Meta:
        model = JobTelemetry
        fields = ["job", "at", "generation", "reports", "data"]
        read_only_fields = fields
