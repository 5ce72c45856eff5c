"""Dashboard pages and the fragments htmx swaps in when the live socket says something changed.

Views only read through selectors and write through the domain services (the same ones the REST API calls).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException, ValidationError

from meshweb.core.api.errors import _flatten
from meshweb.dashboard import router_stats, selectors
from meshweb.dashboard.access import may_steer_fleet, may_use_dashboard
from meshweb.dashboard.forms import JobScaleForm, JobSubmitForm, ReasonForm, example_spec
from meshweb.dashboard.job_telemetry import telemetry_view
from meshweb.fleet.models import NodeStatus
from meshweb.fleet.services import (
    node_quarantine_open,
    node_quarantine_pin,
    node_quarantine_release,
    node_set_status,
)
from meshweb.tenancy.rbac import Principal, principal_for_user
from meshweb.tenancy.roles import Role
from meshweb.training.models import TERMINAL, JobStatus
from meshweb.training.services import job_cancel, job_scale, job_submit

PageView = Callable[..., HttpResponse]


def dashboard_page(view: PageView) -> Callable[..., HttpResponse]:
    """Sends anonymous visitors to the login page, refuses accounts without dashboard access, passes the principal."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("dashboard:login"))
        principal = principal_for_user(request.user)
        if not may_use_dashboard(principal):
            return render(request, "dashboard/forbidden.html", status=403)
        return view(request, principal, *args, **kwargs)

    return wrapper


def _base(principal: Principal, section: str, **extra: Any) -> dict[str, Any]:
    return {
        "principal": principal,
        "section": section,
        "can_steer_fleet": may_steer_fleet(principal),
        **extra,
    }


def _error_lines(exc: APIException) -> list[str]:
    if isinstance(exc, ValidationError):
        return [f"{name}: {msg}" if name else msg for name, msgs in _flatten(exc.detail).items() for msg in msgs]
    return [str(exc.detail)]


# -- overview ----------------------------------------------------------------------------------------------------------


def _overview_context(principal: Principal) -> dict[str, Any]:
    url = getattr(settings, "DASHBOARD_ROUTER_METRICS_URL", "")
    return {
        "by_status": selectors.nodes_by_status(principal),
        "gpu_utilization": selectors.fleet_gpu_utilization(principal),
        "node_gpus": selectors.node_gpu_summary(principal),
        "router": router_stats.scrape(url) if url else None,
        "active_jobs": list(selectors.jobs(principal, "active")[:20]),
        "active_count": selectors.jobs(principal, "active").count(),
    }


@dashboard_page
def overview(request: HttpRequest, principal: Principal) -> HttpResponse:
    context = _base(principal, "overview", feed=[selectors.feed_item(e) for e in selectors.recent_feed(principal, 15)])
    context.update(_overview_context(principal))
    context["route_models"] = selectors.catalog(principal)  # each links to its routing page
    return render(request, "dashboard/overview.html", context)


@dashboard_page
def overview_fragment(request: HttpRequest, principal: Principal) -> HttpResponse:
    return render(
        request, "dashboard/_overview_stats.html", _base(principal, "overview", **_overview_context(principal))
    )


# -- nodes -------------------------------------------------------------------------------------------------------------


@dashboard_page
def nodes(request: HttpRequest, principal: Principal) -> HttpResponse:
    return render(request, "dashboard/nodes.html", _base(principal, "nodes", nodes=selectors.nodes_with_mig(principal)))


@dashboard_page
def nodes_fragment(request: HttpRequest, principal: Principal) -> HttpResponse:
    context = _base(principal, "nodes", nodes=selectors.nodes_with_mig(principal))
    return render(request, "dashboard/_nodes_table.html", context)


def _node_or_404(principal: Principal, name: str) -> Any:
    node = selectors.node_by_name(principal, name)
    if node is None:
        raise Http404(f"No node {name!r}.")
    return node


@dashboard_page
def node_detail(request: HttpRequest, principal: Principal, name: str) -> HttpResponse:
    node = _node_or_404(principal, name)
    readings = {r["uuid"]: r for r in selectors.latest_gpu_readings(principal, node)}
    inventory = selectors.gpus_of(node)
    # Match readings by UUID, else by index (an inventory typed in by hand may not know the UUIDs).
    by_index = {r["index"]: r for r in readings.values() if r["uuid"] not in {g.uuid for g in inventory}}
    gpus = [{"gpu": gpu, "reading": readings.get(gpu.uuid) or by_index.pop(gpu.index, None)} for gpu in inventory]
    shown = {id(g["reading"]) for g in gpus if g["reading"] is not None}
    reported_only = [r for r in readings.values() if id(r) not in shown]
    context = _base(
        principal,
        "nodes",
        node=node,
        gpus=gpus,
        reported_only=reported_only,
        rollup=selectors.node_rollup(node),
        mig=selectors.mig_reports([node]).get(node.name),
        quarantines=selectors.quarantines(principal, node),
        history=selectors.node_status_history(principal, node),
        node_events=selectors.node_events(node),
        statuses=NodeStatus.values,
    )
    return render(request, "dashboard/node_detail.html", context)


@dashboard_page
def node_telemetry(request: HttpRequest, principal: Principal, name: str) -> JsonResponse:
    node = _node_or_404(principal, name)
    minutes = max(1, min(240, int(request.GET.get("minutes", "30") or 30)))
    series = selectors.gpu_series(node, minutes=minutes)
    return JsonResponse(
        {
            "node": node.name,
            "gpus": [
                {
                    "uuid": s.uuid,
                    "index": s.index,
                    "t": s.t,
                    "utilization": s.utilization,
                    "memory_used_pct": s.memory_used_pct,
                    "temperature_c": s.temperature_c,
                    "power_w": s.power_w,
                }
                for s in series
            ],
        }
    )


@require_POST
@dashboard_page
def node_status(request: HttpRequest, principal: Principal, name: str) -> HttpResponse:
    node = _node_or_404(principal, name)
    if not may_steer_fleet(principal):
        return render(request, "dashboard/forbidden.html", status=403)
    form = ReasonForm(request.POST)
    status = request.POST.get("status", "")
    if not form.is_valid() or status not in NodeStatus.values:
        messages.error(request, f"Unknown node status {status!r}." if form.is_valid() else "The reason is too long.")
        return redirect("dashboard:node", name=node.name)
    reason = form.cleaned_data["reason"] or f"set to {status} from the dashboard by {principal.name}"
    try:
        # Quarantine goes through its own services so that the record (reason, release, pin) stays consistent.
        if request.POST.get("pin"):
            node_quarantine_pin(principal=principal, node=node, reason=reason)
            status = NodeStatus.QUARANTINED
        elif status == NodeStatus.QUARANTINED:
            node_quarantine_open(principal=principal, node=node, reason=reason, evidence=[], automatic=False)
        elif node.status == NodeStatus.QUARANTINED and status == NodeStatus.ACTIVE:
            node_quarantine_release(principal=principal, node=node, reason=reason)
        else:
            node_set_status(principal=principal, node=node, status=status, reason=reason)
    except APIException as exc:
        for line in _error_lines(exc):
            messages.error(request, line)
    else:
        messages.success(request, f"Node {node.name} is now {status}.")
    return redirect("dashboard:node", name=node.name)


# -- tenants, models, quarantine, events ------------------------------------------------------------------------------


@dashboard_page
def tenants(request: HttpRequest, principal: Principal) -> HttpResponse:
    return render(
        request, "dashboard/tenants.html", _base(principal, "tenants", rows=selectors.tenants_with_usage(principal))
    )


@dashboard_page
def tenants_fragment(request: HttpRequest, principal: Principal) -> HttpResponse:
    return render(
        request,
        "dashboard/_tenants_table.html",
        _base(principal, "tenants", rows=selectors.tenants_with_usage(principal)),
    )


@dashboard_page
def catalog(request: HttpRequest, principal: Principal) -> HttpResponse:
    return render(request, "dashboard/models.html", _base(principal, "models", models=selectors.catalog(principal)))


def _quarantine_context(principal: Principal) -> dict[str, Any]:
    return _base(
        principal,
        "quarantine",
        quarantines=selectors.quarantines(principal),
        history=selectors.node_status_history(principal),
    )


@dashboard_page
def quarantine(request: HttpRequest, principal: Principal) -> HttpResponse:
    return render(request, "dashboard/quarantine.html", _quarantine_context(principal))


@dashboard_page
def quarantine_fragment(request: HttpRequest, principal: Principal) -> HttpResponse:
    return render(request, "dashboard/_quarantine_tables.html", _quarantine_context(principal))


@dashboard_page
def events(request: HttpRequest, principal: Principal) -> HttpResponse:
    feed = [selectors.feed_item(e) for e in selectors.recent_feed(principal, selectors.FEED_LIMIT)]
    return render(request, "dashboard/events.html", _base(principal, "events", feed=feed))


# -- jobs --------------------------------------------------------------------------------------------------------------


def _jobs_context(principal: Principal, request: HttpRequest) -> dict[str, Any]:
    status = request.GET.get("status", "")
    if status and status != "active" and status not in JobStatus.values:
        status = ""
    return {
        "jobs": list(selectors.jobs(principal, status)[:100]),
        "status_filter": status,
        "statuses": JobStatus.values,
    }


@dashboard_page
def jobs(request: HttpRequest, principal: Principal) -> HttpResponse:
    tenants = selectors.submit_tenants(principal)
    if request.method == "POST":
        form = JobSubmitForm(request.POST, tenants=tenants)
        if form.is_valid():
            data = form.cleaned_data
            try:
                submission = job_submit(
                    principal=principal,
                    tenant=data["tenant"],
                    name=data["name"],
                    spec=data["spec"],
                    priority=data["priority"],
                )
            except APIException as exc:
                for line in _error_lines(exc):
                    form.add_error(None, line)
            else:
                messages.success(request, f"Job {submission.job.pk} ({submission.job.name}) submitted.")
                return redirect("dashboard:job", job_id=submission.job.pk)
        status = 400
    else:
        form = JobSubmitForm(tenants=tenants, initial={"spec": example_spec(), "tenant": tenants.first()})
        status = 200
    context = _base(principal, "jobs", form=form, can_submit=tenants.exists(), **_jobs_context(principal, request))
    return render(request, "dashboard/jobs.html", context, status=status)


@dashboard_page
def jobs_fragment(request: HttpRequest, principal: Principal) -> HttpResponse:
    return render(request, "dashboard/_jobs_table.html", _base(principal, "jobs", **_jobs_context(principal, request)))


def _job_context(principal: Principal, job_id: int) -> dict[str, Any]:
    job = selectors.job(principal, job_id)
    if job is None:
        raise Http404(f"No job {job_id}.")
    placements = selectors.job_placements(job)
    row = selectors.job_telemetry(job)
    telemetry = telemetry_view(
        job_id=job.pk,
        at=row.at if row else None,
        reports=row.reports if row else 0,
        data=row.data if row else {},
        placements=[(p.rank, p.node.name) for p in placements],
    )
    return {
        "job": job,
        "events": selectors.job_events(job),
        "event_limit": selectors.JOB_EVENT_LIMIT,
        "placements": placements,
        "telemetry": telemetry,
        "finished": job.status in TERMINAL,
        "can_act": principal.can(job.tenant_id, Role.MEMBER),
        "spec_json": json.dumps(job.spec, indent=2),
    }


@dashboard_page
def job_detail(request: HttpRequest, principal: Principal, job_id: int) -> HttpResponse:
    context = _base(principal, "jobs", scale_form=JobScaleForm(), **_job_context(principal, job_id))
    return render(request, "dashboard/job_detail.html", context)


@dashboard_page
def job_fragment(request: HttpRequest, principal: Principal, job_id: int) -> HttpResponse:
    return render(request, "dashboard/_job_state.html", _base(principal, "jobs", **_job_context(principal, job_id)))


def _job_for_write(principal: Principal, job_id: int) -> Any:
    job = selectors.job(principal, job_id, Role.MEMBER)
    if job is None:
        raise Http404(f"No job {job_id}.")
    return job


@require_POST
@dashboard_page
def job_cancel_view(request: HttpRequest, principal: Principal, job_id: int) -> HttpResponse:
    job = _job_for_write(principal, job_id)
    form = ReasonForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        job_cancel(principal=principal, job=job, reason=reason)
    except APIException as exc:
        for line in _error_lines(exc):
            messages.error(request, line)
    else:
        messages.success(request, f"Job {job.pk} cancelled.")
    return redirect("dashboard:job", job_id=job.pk)


@require_POST
@dashboard_page
def job_scale_view(request: HttpRequest, principal: Principal, job_id: int) -> HttpResponse:
    job = _job_for_write(principal, job_id)
    form = JobScaleForm(request.POST)
    if not form.is_valid():
        for line in form.errors.get("workers", []):
            messages.error(request, f"workers: {line}")
        return redirect("dashboard:job", job_id=job.pk)
    try:
        job_scale(principal=principal, job=job, workers=form.cleaned_data["workers"])
    except APIException as exc:
        for line in _error_lines(exc):
            messages.error(request, line)
    else:
        messages.success(request, f"Job {job.pk} scaled to {form.cleaned_data['workers']} workers.")
    return redirect("dashboard:job", job_id=job.pk)
