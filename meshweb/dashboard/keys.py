"""The inference keys page: a tenant's keys for the routers, created here (the secret shown once, on this response
only) and revoked here, through the same services as `/api/v1/inference-keys/`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from agents.proto import access
from meshweb.dashboard.views import _base, dashboard_page
from meshweb.tenancy.models import InferenceKey, Tenant
from meshweb.tenancy.rbac import Principal, restrict
from meshweb.tenancy.roles import Role
from meshweb.tenancy.services import inference_key_create, inference_key_revoke


class KeyCreateForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none(), to_field_name="slug", empty_label=None)
    name = forms.CharField(max_length=100, required=False)
    models = forms.CharField(
        required=False, help_text="comma-separated model names of the tenant's catalog; empty = every model"
    )
    expires_in_days = forms.IntegerField(min_value=1, max_value=3650, required=False)
    requests_per_s = forms.FloatField(min_value=0.001, max_value=access.MAX_REQUESTS_PER_S, required=False)
    tokens_per_min = forms.IntegerField(min_value=1, max_value=2_147_483_647, required=False)
    concurrent_requests_max = forms.IntegerField(min_value=1, max_value=access.MAX_CONCURRENT, required=False)
    tokens_per_day = forms.IntegerField(min_value=1, max_value=access.MAX_TOKENS_PER_DAY, required=False)

    def __init__(self, *args: Any, tenants: QuerySet[Tenant], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["tenant"].queryset = tenants  # type: ignore[attr-defined]


def _writable_tenants(principal: Principal) -> QuerySet[Tenant]:
    return restrict(Tenant.objects.all(), principal, Role.TENANT_ADMIN)


@dashboard_page
def keys(request: HttpRequest, principal: Principal) -> HttpResponse:
    tenants = _writable_tenants(principal)
    created: tuple[InferenceKey, str] | None = None
    form = KeyCreateForm(request.POST or None, tenants=tenants)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        limits = {
            k: d[k]
            for k in ("requests_per_s", "tokens_per_min", "concurrent_requests_max", "tokens_per_day")
            if d.get(k) is not None
        }
        try:
            created = inference_key_create(
                principal=principal,
                tenant=d["tenant"],
                name=d["name"],
                model_names=[m.strip() for m in d["models"].split(",") if m.strip()],
                expires_at=timezone.now() + timedelta(days=d["expires_in_days"]) if d["expires_in_days"] else None,
                limits=limits,
            )
        except ValidationError as exc:
            for field, errs in exc.message_dict.items():
                for e in errs:
                    form.add_error(field if field in form.fields else None, e)
        else:
            form = KeyCreateForm(tenants=tenants)
    rows = restrict(InferenceKey.objects.select_related("tenant"), principal, Role.MEMBER).order_by("-id")[:500]
    return render(
        request,
        "dashboard/keys.html",
        _base(
            principal,
            "keys",
            rows=rows,
            form=form,
            can_create=tenants.exists(),
            created=created,
            router_url=settings.DASHBOARD_ROUTER_URL.rstrip("/") + "/v1",
        ),
    )


@require_POST
@dashboard_page
def key_revoke(request: HttpRequest, principal: Principal, key_id: int) -> HttpResponse:
    key = restrict(InferenceKey.objects.all(), principal, Role.MEMBER).filter(pk=key_id).first()
    if key is None:
        raise Http404("no such key")
    if not principal.can(key.tenant_id, Role.TENANT_ADMIN):
        messages.error(request, "Only a tenant admin can revoke this key.")
    else:
        inference_key_revoke(principal=principal, key=key)
        messages.success(request, f"Key {key.prefix} revoked: every router refuses it within seconds.")
    return redirect("dashboard:keys")
