"""Generic audited writes for plain records; domain actions with rules of their own live in each app's services."""

from __future__ import annotations

from typing import Any, TypeVar

from django.db import models, transaction

from meshweb.audit.services import audit_record
from meshweb.tenancy.rbac import Principal, tenant_of

M = TypeVar("M", bound=models.Model)


def _label(obj: models.Model) -> str:
    return obj._meta.model_name or "object"


def _snapshot(obj: models.Model) -> dict[str, Any]:
    snap = getattr(obj, "snapshot", None)
    return snap() if callable(snap) else {"id": obj.pk}


@transaction.atomic
def object_create(*, principal: Principal, model: type[M], data: dict[str, Any]) -> M:
    obj = model(**data)
    obj.full_clean()
    obj.save()
    audit_record(
        actor=principal.name, action=f"{_label(obj)}.create", obj=obj, tenant_id=tenant_of(obj), after=_snapshot(obj)
    )
    return obj


@transaction.atomic
def object_update(*, principal: Principal, obj: M, data: dict[str, Any]) -> M:
    before = _snapshot(obj)
    for key, value in data.items():
        setattr(obj, key, value)
    obj.full_clean()
    obj.save()
    audit_record(
        actor=principal.name,
        action=f"{_label(obj)}.update",
        obj=obj,
        tenant_id=tenant_of(obj),
        before=before,
        after=_snapshot(obj),
    )
    return obj


@transaction.atomic
def object_delete(*, principal: Principal, obj: models.Model) -> None:
    before = _snapshot(obj)
    tenant_id = tenant_of(obj)
    audit_record(actor=principal.name, action=f"{_label(obj)}.delete", obj=obj, tenant_id=tenant_id, before=before)
    obj.delete()
