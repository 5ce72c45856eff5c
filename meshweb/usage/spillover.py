"""Regions, cells and the spill-over between them: the fleet's regions and cells (their zones and nodes) with the
requests routers sent from one cell to another (reported with the usage batches, `Spillover`), for the REST API
(`GET /api/v1/usage/spillover/`) and the dashboard's Cells page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Sum
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from meshweb.fleet.models import Cell, Node, Region
from meshweb.tenancy.permissions import principal_of
from meshweb.usage.models import Spillover

MAX_HOURS = 24 * 31


def cells_overview(hours: float = 1.0, now: datetime | None = None) -> dict[str, Any]:
    """Regions with their cells (zone, nodes) and the spill-over of the last `hours`, per (from, to, reason)."""
    now = now or datetime.now(UTC)
    nodes: dict[int, list[str]] = {}
    for cell_id, name in Node.objects.filter(cell__isnull=False).values_list("cell_id", "name").order_by("name"):
        nodes.setdefault(cell_id, []).append(name)
    regions: dict[str, list[dict[str, Any]]] = {r.name: [] for r in Region.objects.order_by("name")}
    for c in Cell.objects.select_related("zone__region").order_by("name"):
        regions.setdefault(c.zone.region.name, []).append(
            {"name": c.name, "zone": c.zone.name, "nodes": nodes.get(c.pk, [])}
        )
    spill = [
        {"from_cell": r["from_cell"], "to_cell": r["to_cell"], "reason": r["reason"], "requests": r["n"]}
        for r in Spillover.objects.filter(minute__gte=now - timedelta(hours=hours))
        .values("from_cell", "to_cell", "reason")
        .annotate(n=Sum("requests"))
        .order_by("from_cell", "to_cell", "reason")
    ]
    return {
        "hours": hours,
        "regions": [{"name": name, "cells": cells} for name, cells in regions.items()],
        "spillover": spill,
    }


class SpilloverView(APIView):
    """Regions and cells, and the requests routers spilled from one cell to another over the last `hours`."""

    @extend_schema(
        parameters=[OpenApiParameter("hours", float, description="window, default 1, at most 744")],
        responses={200: OpenApiTypes.OBJECT},
        operation_id="usage_spillover",
    )
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        if not principal.platform_admin:
            raise exceptions.PermissionDenied("the fleet's cells and spill-over are for platform admins")
        raw = request.query_params.get("hours", "1")
        try:
            hours = float(raw)
        except ValueError:
            raise exceptions.ValidationError({"hours": ["must be a number of hours"]}) from None
        if not 0 < hours <= MAX_HOURS:
            raise exceptions.ValidationError({"hours": [f"must be above 0 and at most {MAX_HOURS}"]})
        return Response(cells_overview(hours))
