"""The routing page's live data: a router's `/infermesh/routing` report of one model, read every second for each
socket that watches the model, with this socket's rates (requests/s, errors/s, mean TTFT) derived from the router's
monotonic per-target counts between two reads.

The router is the one the overview scrapes (`INFERMESH_ROUTER_METRICS_URL`): its report lives beside /metrics.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from django.conf import settings

INTERVAL_S = 1.0


def routing_url() -> str | None:
    metrics = str(getattr(settings, "DASHBOARD_ROUTER_METRICS_URL", "") or "")
    if not metrics:
        return None
    base = metrics.split("?", 1)[0]
    base = base[: -len("/metrics")] if base.endswith("/metrics") else base.rstrip("/")
    return f"{base}/infermesh/routing"


def fetch(model: str, tenant: str = "", timeout_s: float = 2.0) -> dict[str, Any]:
    """The router's report of `model` as `tenant` (slug) sees it, or {"error": why}."""
    url = routing_url()
    if url is None:
        return {"error": "no router configured (INFERMESH_ROUTER_METRICS_URL)"}
    try:
        params = {"model": model, **({"tenant": tenant} if tenant else {})}
        resp = httpx.get(url, params=params, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return {"error": f"router unreachable: {exc.__class__.__name__}"}
    if resp.status_code != 200:
        return {"error": f"router answered HTTP {resp.status_code}"}
    try:
        body = resp.json()
        models = body.get("models") or []
    except ValueError:
        return {"error": "router answered something that is not JSON"}
    if not models:
        return {"error": f"the router does not know model {model!r}"}
    # the router's own place in the mesh and gossip's degraded (local-only) mode go with the model's report
    return {**models[0], "mesh": body.get("mesh") or {}, "local_only": bool(body.get("local_only"))}


class RouteRates:
    """Per-socket memory of the last counts, to turn them into rates."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[float, int, int, float, int]] = {}

    def enrich(self, report: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        for t in report.get("targets") or []:
            key = str(t.get("id"))
            cur = (now, int(t.get("requests") or 0), int(t.get("errors") or 0), float(t.get("ttft_sum_s") or 0.0),
                   int(t.get("ttft_n") or 0))  # fmt: skip
            prev = self.last.get(key)
            self.last[key] = cur
            t["rps"] = t["errors_per_s"] = t["ttft_ms"] = None
            if prev is None or cur[0] <= prev[0] or cur[1] < prev[1]:
                continue
            dt = cur[0] - prev[0]
            t["rps"] = round((cur[1] - prev[1]) / dt, 2)
            t["errors_per_s"] = round((cur[2] - prev[2]) / dt, 2)
            n = cur[4] - prev[4]
            t["ttft_ms"] = round((cur[3] - prev[3]) / n * 1000, 1) if n > 0 else None
        return report
