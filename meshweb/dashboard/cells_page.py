"""The Cells page: regions, their cells and nodes, and the requests routers spilled between cells in the last hour."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from meshweb.dashboard.views import _base, dashboard_page
from meshweb.tenancy.rbac import Principal
from meshweb.usage.spillover import cells_overview


@dashboard_page
def cells(request: HttpRequest, principal: Principal) -> HttpResponse:
    if not principal.platform_admin:
        return render(request, "dashboard/forbidden.html", status=403)
    return render(request, "dashboard/cells.html", _base(principal, "cells", **cells_overview()))
