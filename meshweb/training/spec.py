"""The training job spec and its rules: the one definition used by the API, services and the admin."""

from __future__ import annotations

import re
from typing import Any

from rest_framework import serializers

from agents.proto.vocab import MIG_PROFILES, MPS_PERCENT_MAX
from meshweb.core.api.serializers import StrictSerializer
from meshweb.fleet.models import GpuType
from meshweb.training.models import Topology

MAX_WORKERS = 1024
MAX_GPUS_PER_WORKER = 16
MAX_RUNTIME_S = 30 * 24 * 3600
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_URI = re.compile(r"^(s3|gs|az|hf|nfs|file|https?)://\S+$")


class WorkersSerializer(StrictSerializer):
    min = serializers.IntegerField(min_value=1, max_value=MAX_WORKERS)
    max = serializers.IntegerField(min_value=1, max_value=MAX_WORKERS)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["min"] > attrs["max"]:
            raise serializers.ValidationError(
                {"min": [f"workers.min ({attrs['min']}) must not exceed workers.max ({attrs['max']})."]}
            )
        return attrs


class JobSpecSerializer(StrictSerializer):
    image = serializers.CharField(max_length=500)
    entrypoint = serializers.ListField(child=serializers.CharField(max_length=1000), min_length=1, max_length=64)
    args = serializers.ListField(child=serializers.CharField(max_length=4000), max_length=256, default=list)
    env = serializers.DictField(child=serializers.CharField(max_length=4000, allow_blank=True), default=dict)
    workers = WorkersSerializer()
    gpus_per_worker = serializers.IntegerField(min_value=0, max_value=MAX_GPUS_PER_WORKER)
    gpu_types = serializers.ListField(
        child=serializers.ChoiceField(choices=GpuType.choices), max_length=len(GpuType.choices), default=list
    )
    mig_profile = serializers.ChoiceField(
        choices=list(MIG_PROFILES),
        allow_blank=True,
        required=False,
        help_text="Run each worker on a MIG slice of this profile (gpus_per_worker 1); refused at submission when "
        "no enrolled node exposes enough such slices.",
        error_messages={"invalid_choice": f'Unknown MIG profile "{{input}}"; known: {", ".join(MIG_PROFILES)}.'},
    )
    mps_percent = serializers.IntegerField(
        min_value=0,
        max_value=MPS_PERCENT_MAX,
        required=False,
        help_text="Share whole GPUs through MPS: each worker gets this percentage of a GPU's SMs (gpus_per_worker 1; "
        "0 or absent: each worker has its GPUs to itself).",
    )
    topology = serializers.ChoiceField(choices=Topology.choices, default=Topology.AUTO)
    checkpoint_uri = serializers.CharField(max_length=500, allow_blank=True, default="")
    max_runtime_s = serializers.IntegerField(min_value=60, max_value=MAX_RUNTIME_S, default=24 * 3600)

    def validate_env(self, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(name for name in value if not _ENV_NAME.match(name))
        if bad:
            raise serializers.ValidationError(f"Invalid environment variable names: {', '.join(bad)}.")
        if len(value) > 256:
            raise serializers.ValidationError("At most 256 environment variables.")
        return value

    def validate_checkpoint_uri(self, value: str) -> str:
        if value and not _URI.match(value):
            raise serializers.ValidationError("Use a URI with a scheme: s3://, gs://, az://, hf://, nfs://, file://.")
        return value

    def validate_gpu_types(self, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("GPU types must not repeat.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["gpus_per_worker"] == 0 and attrs.get("gpu_types"):
            raise serializers.ValidationError({"gpu_types": ["gpu_types needs gpus_per_worker ≥ 1."]})
        # absent and empty mean the same (whole GPUs of their own): the canonical spec leaves them out
        if not attrs.get("mig_profile"):
            attrs.pop("mig_profile", None)
        if not attrs.get("mps_percent"):
            attrs.pop("mps_percent", None)
        if "mig_profile" in attrs and "mps_percent" in attrs:
            raise serializers.ValidationError({"mps_percent": ["A MIG slice is not shared through MPS: ask for one."]})
        for name in ("mig_profile", "mps_percent"):
            if name in attrs and attrs["gpus_per_worker"] != 1:
                raise serializers.ValidationError(
                    {name: [f"{name} needs gpus_per_worker 1 (a worker runs on one slice or GPU share)."]}
                )
        return attrs


def validate_spec(spec: Any) -> dict[str, Any]:
    """The spec in canonical form, or a ValidationError naming every wrong field."""
    serializer = JobSpecSerializer(data=spec)
    if not serializer.is_valid():
        raise serializers.ValidationError({"spec": serializer.errors})
    return dict(serializer.validated_data)
