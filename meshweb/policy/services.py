"""Writes of routing policies with their rules: checked whole (meshweb.policy.rules), then written and audited
through the generic services, so the dashboard's form and the REST API refuse and apply the same way."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from rest_framework import exceptions

from meshweb.catalog.models import Model
from meshweb.policy.models import RoutingPolicy
from meshweb.policy.rules import check_routing_policy
from meshweb.tenancy.rbac import Principal
from meshweb.tenancy.scoped.writes import object_create, object_update

FIELDS = ("strategy", "ab_split", "shadow_strategy", "hedging", "pin_nodes", "pin_zones", "params")


class PolicyRefused(exceptions.ValidationError):
    """A policy that cannot be applied: 422 with the problems by field."""

    status_code = 422


@transaction.atomic
def routing_policy_set(*, principal: Principal, model: Model, data: dict[str, Any]) -> RoutingPolicy:
    """Create or change the routing policy of `model` (its tenant's); nothing is written when any field is refused."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise PolicyRefused({name: ["Unknown field."] for name in unknown})
    current = RoutingPolicy.objects.select_for_update().filter(tenant_id=model.tenant_id, model=model).first()
    merged = {f: data.get(f, getattr(current, f, None)) for f in FIELDS}
    problems = check_routing_policy(merged)
    if problems:
        raise PolicyRefused(problems)
    if current is None:
        return object_create(
            principal=principal, model=RoutingPolicy, data={"tenant_id": model.tenant_id, "model": model, **data}
        )
    return object_update(principal=principal, obj=current, data=data)
