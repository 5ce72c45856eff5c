"""The usage page: what the routers metered for the tenants the viewer may see (requests, tokens, 429s, errors, TTFT)
per tenant and model over the last day, and tokens per minute over the last hour as a chart."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from agents.proto.usage import BOUNDS_S
from meshweb.dashboard.views import _base, dashboard_page
from meshweb.tenancy.rbac import Principal, restrict
from meshweb.tenancy.roles import Role
from meshweb.usage.api import _quantile
from meshweb.usage.models import UsageRollup


def usage_context(principal: Principal, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    cells = restrict(UsageRollup.objects.all(), principal, Role.VIEWER)
    day = (
        cells.filter(minute__gte=now - timedelta(days=1))
        .values("tenant__slug", "model")
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            throttled=Sum("throttled"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
        )
        .order_by("tenant__slug", "model")
    )
    ttft: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * (len(BOUNDS_S) + 1))
    for slug, model, hist in cells.filter(minute__gte=now - timedelta(days=1)).values_list(
        "tenant__slug", "model", "ttft"
    ):
        acc = ttft[(slug, model)]
        for i, n in enumerate(hist[: len(acc)]):
            acc[i] += n
    rows = [dict(r, ttft_p95_s=_quantile(ttft[(r["tenant__slug"], r["model"])], 0.95)) for r in day]
    # Tokens per minute of the last hour, one series per tenant (uPlot's columns: x, then one per series).
    start = (now - timedelta(hours=1)).replace(second=0, microsecond=0)
    minutes = [int((start + timedelta(minutes=i)).timestamp()) for i in range(61)]
    series: dict[str, list[int]] = {}
    for slug, minute, p, c in (
        cells.filter(minute__gte=start)
        .values("tenant__slug", "minute")
        .annotate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
        .values_list("tenant__slug", "minute", "p", "c")
    ):
        i = int((minute - start).total_seconds() // 60)
        if 0 <= i < len(minutes):
            series.setdefault(slug, [0] * len(minutes))[i] += int(p or 0) + int(c or 0)
    return {"rows": rows, "chart": {"x": minutes, "series": series}}


@dashboard_page
def usage(request: HttpRequest, principal: Principal) -> HttpResponse:
    return render(request, "dashboard/usage.html", _base(principal, "usage", **usage_context(principal)))
