"""`POST /api/v1/usage/reports/` (routers, with a node credential) and `GET /api/v1/usage/` (tenants' users)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from django.db.models import Sum
from django.db.models.functions import TruncDay, TruncHour, TruncMinute
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from pydantic import ValidationError as PydanticError
from rest_framework import exceptions, permissions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from agents.proto.usage import BOUNDS_S
from agents.proto.usage import UsageBatch as WireBatch
from meshweb.identity.credentials import node_authenticate
from meshweb.tenancy.permissions import principal_of
from meshweb.tenancy.rbac import restrict
from meshweb.tenancy.roles import Role
from meshweb.usage.models import UsageRollup
from meshweb.usage.services import usage_ingest

GRANULARITY = {"minute": TruncMinute, "hour": TruncHour, "day": TruncDay}
MAX_RANGE = timedelta(days=93)


def _is_user_credential(request: Request) -> bool:
    """Whether the request carries a valid portal credential (API token, session or OIDC bearer) of a user."""
    authenticators = cast(list[type[BaseAuthentication]], api_settings.DEFAULT_AUTHENTICATION_CLASSES)
    for authenticator in authenticators:
        try:
            if authenticator().authenticate(request) is not None:
                return True
        except exceptions.AuthenticationFailed:
            continue
    return False


class UsageReportView(APIView):
    """A router's batch; authenticated with a node credential (`infermesh node enroll`), applied once per id."""

    authentication_classes: list[Any] = []
    permission_classes = [permissions.AllowAny]

    def get_authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="node credential"'  # a refused credential answers 401, not 403

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT},
        auth=[],
        operation_id="usage_report",
        description="A router's usage batch (agents/proto/usage.py), with `Authorization: Bearer imn_...` (the "
        "node credential of the router's node). Applied once per batch id.",
    )
    def post(self, request: Request) -> Response:
        scheme, _, raw = (request.headers.get("Authorization") or "").partition(" ")
        raw = raw.strip() if scheme.lower() == "bearer" else ""
        node, why = node_authenticate(raw)
        if node is None:
            if _is_user_credential(request):  # a valid credential, but not one that may report usage
                raise exceptions.PermissionDenied("usage reports take a node credential (imn_...), not a user's")
            raise exceptions.AuthenticationFailed(why)
        try:
            batch = WireBatch.model_validate(request.data)
        except PydanticError as exc:
            raise exceptions.ValidationError(
                {".".join(str(p) for p in e["loc"]) or "body": [e["msg"]] for e in exc.errors()[:20]}
            ) from None
        applied, skipped, duplicate = usage_ingest(node=node, batch=batch)
        return Response({"batch": batch.batch, "applied": applied, "skipped": skipped, "duplicate": duplicate})


def _quantile(hist: list[int], q: float) -> float | None:
    total = sum(hist)
    if not total:
        return None
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= q * total:
            return BOUNDS_S[i] if i < len(BOUNDS_S) else float("inf")
    return None


def _time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    value = parse_datetime(raw)
    if value is None:
        raise exceptions.ValidationError({name: ["must be an ISO 8601 date-time, e.g. 2026-01-31T00:00:00Z"]})
    if not 1970 <= value.year <= 9000:
        raise exceptions.ValidationError({name: ["must lie between the years 1970 and 9000"]})
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class UsageView(APIView):
    """Usage roll-ups the requester may see: `tenant`, `model`, `key`, `start`, `end` (ISO), `granularity`
    (minute | hour | day, default hour). Histogram quantiles are bucket upper bounds."""

    @extend_schema(
        parameters=[
            OpenApiParameter("tenant", str, description="tenant slug"),
            OpenApiParameter("model", str),
            OpenApiParameter("key", str, description="inference key prefix"),
            OpenApiParameter("start", OpenApiTypes.DATETIME, description="default: end - 1 day"),
            OpenApiParameter("end", OpenApiTypes.DATETIME, description="default: now"),
            OpenApiParameter("granularity", str, enum=list(GRANULARITY), description="default: hour"),
        ],
        responses={200: OpenApiTypes.OBJECT},
        operation_id="usage_list",
    )
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        gran = request.query_params.get("granularity", "hour")
        if gran not in GRANULARITY:
            raise exceptions.ValidationError({"granularity": [f"must be one of {', '.join(GRANULARITY)}"]})
        end = _time(request, "end") or datetime.now(UTC)
        start = _time(request, "start") or end - timedelta(days=1)
        if start >= end:
            raise exceptions.ValidationError({"start": ["must be before end"]})
        if end - start > MAX_RANGE:
            raise exceptions.ValidationError({"start": [f"the range may span at most {MAX_RANGE.days} days"]})
        qs = restrict(UsageRollup.objects.all(), principal, Role.VIEWER).filter(minute__gte=start, minute__lt=end)
        for param, field in (("tenant", "tenant__slug"), ("model", "model"), ("key", "key_prefix")):
            if "\x00" in request.query_params.get(param, ""):
                raise exceptions.ValidationError({param: ["must not contain NUL characters"]})
            if request.query_params.get(param):
                qs = qs.filter(**{field: request.query_params[param]})
        rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        for cell in qs.annotate(bucket=GRANULARITY[gran]("minute", tzinfo=UTC)).select_related("tenant"):
            k = (cell.bucket, cell.tenant.slug, cell.model, cell.key_prefix)  # type: ignore[attr-defined]
            row = rows.get(k)
            if row is None:
                row = rows[k] = {
                    "bucket": cell.bucket.isoformat(),  # type: ignore[attr-defined]
                    "tenant": cell.tenant.slug,
                    "model": cell.model,
                    "key": cell.key_prefix,
                    "requests": 0,
                    "errors": 0,
                    "throttled": 0,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "ttft": [0] * (len(BOUNDS_S) + 1),
                    "latency": [0] * (len(BOUNDS_S) + 1),
                }
            for f in ("requests", "errors", "throttled", "prompt_tokens", "completion_tokens"):
                row[f] += getattr(cell, f)
            for f in ("ttft", "latency"):
                row[f] = [a + b for a, b in zip(row[f], list(getattr(cell, f)) + [0] * len(row[f]), strict=False)]
        results = sorted(rows.values(), key=lambda r: (r["bucket"], r["tenant"], r["model"], r["key"]))
        for r in results:
            r["ttft_p50_s"], r["ttft_p95_s"] = _quantile(r["ttft"], 0.5), _quantile(r["ttft"], 0.95)
            r["latency_p95_s"] = _quantile(r["latency"], 0.95)
        totals = qs.aggregate(
            requests=Sum("requests"), prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens")
        )
        return Response(
            {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "granularity": gran,
                "bounds_s": list(BOUNDS_S),
                "totals": {k: int(v or 0) for k, v in totals.items()},
                "results": results,
            }
        )
