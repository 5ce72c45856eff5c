"""The routing page of a model (`/dashboard/models/<id>/route/`): how the mesh routes it right now (targets with
their fused state, the policy and strategy in force, the ranking with each term's contribution, per-target traffic),
live over the dashboard socket, and the form that sets the model's routing policy through the same service as the
REST API."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from meshweb.catalog.models import Model
from meshweb.dashboard.route_feed import routing_url
from meshweb.dashboard.views import _base, _error_lines, dashboard_page
from meshweb.fleet.models import Node, Zone
from meshweb.policy.models import RoutingPolicy, Slo, Strategy
from meshweb.policy.services import PolicyRefused, routing_policy_set
from meshweb.tenancy.rbac import Principal, restrict
from meshweb.tenancy.roles import Role
from meshweb.tenancy.scoped.writes import object_create, object_update


def visible_model(principal: Principal, model_id: int, minimum: str = Role.VIEWER) -> Model | None:
    return restrict(Model.objects.select_related("tenant"), principal, minimum).filter(pk=model_id).first()


@dashboard_page
def model_route(request: HttpRequest, principal: Principal, model_id: int) -> HttpResponse:
    model = visible_model(principal, model_id)
    if model is None:
        raise Http404(f"No model {model_id}.")
    policy = RoutingPolicy.objects.filter(tenant_id=model.tenant_id, model=model).first()
    context = _base(
        principal,
        "models",
        model=model,
        policy=policy,
        split_text=json.dumps(policy.ab_split) if policy and policy.ab_split else "",
        lora_load_s=(policy.params or {}).get("lora_load_s", "") if policy else "",
        slo=Slo.objects.filter(tenant_id=model.tenant_id, model=model).first(),
        strategies=Strategy.values,
        nodes=list(Node.objects.order_by("name").values_list("name", flat=True)),
        zones=list(Zone.objects.order_by("name").values_list("name", flat=True)),
        can_edit=visible_model(principal, model_id, Role.OPERATOR) is not None,
        router_configured=routing_url() is not None,
    )
    return render(request, "dashboard/model_route.html", context)


def _split(text: str) -> Any:
    """`hybrid_mesh=70, least_queue=30` or JSON; anything unreadable goes to the rules, which name the field."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    out: dict[str, Any] = {}
    for part in text.split(","):
        name, sep, share = part.partition("=")
        if not sep:
            return text
        try:
            out[name.strip()] = float(share)
        except ValueError:
            out[name.strip()] = share.strip()
    return out


def _params(policy: RoutingPolicy | None, text: str) -> dict[str, Any]:
    """The policy's params with the form's adapter load time set (blank: removed, the strategies' default applies).
    Text that is no number goes on as text, so the policy's rules refuse it with the same message as the REST API."""
    params = dict(policy.params or {}) if policy is not None else {}
    text = text.strip()
    if not text:
        params.pop("lora_load_s", None)
        return params
    try:
        params["lora_load_s"] = float(text)
    except ValueError:
        params["lora_load_s"] = text
    return params


def _slo_set(principal: Principal, model: Model, text: str) -> None:
    try:
        ttft = int(text)
    except ValueError:
        raise PolicyRefused({"slo_ttft_ms": ["Give the TTFT target in whole milliseconds."]}) from None
    if not 1 <= ttft <= 3_600_000:
        raise PolicyRefused({"slo_ttft_ms": ["The TTFT target must be 1..3600000 ms."]})
    slo = Slo.objects.filter(tenant_id=model.tenant_id, model=model).first()
    if slo is None:
        object_create(
            principal=principal,
            model=Slo,
            data={"tenant_id": model.tenant_id, "model": model, "ttft_p99_ms": ttft, "latency_p99_ms": ttft * 10},
        )
    elif slo.ttft_p99_ms != ttft:
        object_update(principal=principal, obj=slo, data={"ttft_p99_ms": ttft})


@require_POST
@dashboard_page
def model_policy_set(request: HttpRequest, principal: Principal, model_id: int) -> HttpResponse:
    model = visible_model(principal, model_id, Role.OPERATOR)
    if model is None:
        raise Http404(f"No model {model_id} you may change.")
    post = request.POST
    data = {
        "strategy": post.get("strategy", ""),
        "shadow_strategy": post.get("shadow_strategy", ""),
        "ab_split": _split(post.get("ab_split", "")),
        "hedging": post.get("hedging") == "on",
        "pin_nodes": post.getlist("pin_nodes"),
        "pin_zones": post.getlist("pin_zones"),
    }
    if "lora_load_s" in post:  # a post without the field (an older page) leaves the params as they are
        current = RoutingPolicy.objects.filter(tenant_id=model.tenant_id, model=model).first()
        data["params"] = _params(current, post["lora_load_s"])
    slo_text = post.get("slo_ttft_ms", "").strip()
    try:
        with transaction.atomic():  # the policy and the SLO together, or neither
            routing_policy_set(principal=principal, model=model, data=data)
            if slo_text:
                _slo_set(principal, model, slo_text)
    except APIException as exc:
        for line in _error_lines(exc):
            messages.error(request, f"Policy refused, nothing changed. {line}")
    else:
        messages.success(request, f"Routing policy of {model.name} saved; routers apply it within seconds.")
    return redirect("dashboard:model-route", model_id=model.pk)
