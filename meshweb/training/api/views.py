"""Training job endpoints: submission (idempotent), cancel, scale, events, telemetry."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import prefetch_related_objects
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from meshweb.tenancy.roles import Role
from meshweb.tenancy.scoped.views import ScopedViewSetMixin
from meshweb.training.api.serializers import (
    JobCancelSerializer,
    JobEnvelopeSerializer,
    JobEventSerializer,
    JobScaleSerializer,
    JobSerializer,
    JobSubmitSerializer,
    JobTelemetrySerializer,
)
from meshweb.training.models import JobEvent, JobPlacement, JobTelemetry, TrainingJob
from meshweb.training.services import job_cancel, job_scale, job_submit, request_fingerprint

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Retrying a submission with the same key and body returns the first job instead of a new one.",
)


class JobViewSet(
    ScopedViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,  # type: ignore[type-arg]
):
    serializer_class = JobSerializer
    write_role = Role.MEMBER
    filterset_fields = ["status", "tenant__slug", "name"]
    ordering_fields = ["created_at", "priority", "name", "status"]
    ordering = ["-created_at", "-id"]

    def base_queryset(self) -> models.QuerySet[TrainingJob]:
        return TrainingJob.objects.select_related("tenant").prefetch_related("placements__node")

    @extend_schema(request=JobSubmitSerializer, responses={201: JobSerializer}, parameters=[IDEMPOTENCY_HEADER])
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Submit a training job; refused with 422 naming the quota when it would exceed one."""
        serializer = JobEnvelopeSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            raise ValidationError({"Idempotency-Key": ["The header must hold 1 to 255 characters."]})
        submission = job_submit(
            principal=self.principal,
            tenant=data["tenant"],
            name=data["name"],
            spec=data["spec"],
            priority=data["priority"],
            idempotency_key=key,
            fingerprint=request_fingerprint(request.data) if key else None,
        )
        # A replayed job comes as it is now, and its placements are read with it; a new one has none yet (an empty
        # prefetch spares the serializer a query).
        job = submission.job
        if submission.replayed:
            prefetch_related_objects([job], "placements__node")
        else:
            job._prefetched_objects_cache = {"placements": JobPlacement.objects.none()}  # type: ignore[attr-defined]
        headers = {"Location": f"/api/v1/jobs/{job.pk}/"}
        if submission.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED, headers=headers)

    @extend_schema(request=JobCancelSerializer, responses={200: JobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: Any = None) -> Response:
        job = self.get_object()
        body = JobCancelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        job_cancel(principal=self.principal, job=job, reason=body.validated_data["reason"])
        return Response(JobSerializer(self.base_queryset().get(pk=job.pk)).data)

    @extend_schema(request=JobScaleSerializer, responses={200: JobSerializer})
    @action(detail=True, methods=["post"])
    def scale(self, request: Request, pk: Any = None) -> Response:
        job = self.get_object()
        body = JobScaleSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        job_scale(principal=self.principal, job=job, workers=body.validated_data["workers"])
        return Response(JobSerializer(self.base_queryset().get(pk=job.pk)).data)

    @extend_schema(request=None, responses={200: JobEventSerializer(many=True)})
    @action(detail=True, methods=["get"], filter_backends=[])
    def events(self, request: Request, pk: Any = None) -> Response:
        """The job's events, oldest first."""
        job = self.get_object()
        page = self.paginate_queryset(JobEvent.objects.filter(job=job).order_by("at", "id"))
        return self.get_paginated_response(JobEventSerializer(page, many=True).data)

    @extend_schema(request=None, responses={200: JobTelemetrySerializer})
    @action(detail=True, methods=["get"], filter_backends=[])
    def telemetry(self, request: Request, pk: Any = None) -> Response:
        """The job's latest telemetry roll-up as its scheduler reported it (`reports` 0 and empty data until the
        first report)."""
        job = self.get_object()
        row = JobTelemetry.objects.filter(job=job).first()
        if row is None:
            return Response({"job": job.pk, "at": None, "generation": 0, "reports": 0, "data": {}})
        return Response(JobTelemetrySerializer(row).data)
