"""What agents learn of each portal object: its policy-store key and value (the wire shape of agents.proto.portal_link).

The builders live with the apps that own the models (each app's `changes.py`, registered at app ready in
meshweb/core/changes.py); this module imports no domain model. Objects of unregistered models (memberships, API
tokens, audit) publish nothing. A delete also removes what depended on the object (a tenant's models, a model's
policies, ...), as the owning apps registered.
"""

from __future__ import annotations

from typing import Any

from django.db import models

from meshweb.core.changes import Put, dependents_of, registered_models, registration

__all__ = ["Put", "changes_for", "puts_for", "snapshot_entries"]


def _withdrawn(obj: models.Model) -> bool:
    reg = registration(type(obj))
    return reg is not None and reg.withdrawn is not None and reg.withdrawn(obj)


def puts_for(obj: models.Model) -> list[Put]:
    reg = registration(type(obj))
    if reg is None:
        return []
    out = list(reg.build(obj))
    if reg.related is not None:
        out.extend(reg.related(obj))
    return out


def changes_for(obj: models.Model, *, deleted: bool) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(kind, key, op, value) for every store key that `obj`'s write touches."""
    if registration(type(obj)) is None:
        return []
    deleted = deleted or _withdrawn(obj)
    if not deleted:
        return [(p.kind, p.key, "put" if p.value is not None else "delete", p.value) for p in puts_for(obj)]
    doomed = [*puts_for(obj)]
    for dep in dependents_of(obj):
        doomed.extend(puts_for(dep))
    doomed = [p for p in doomed if p.value is not None]  # an optional key the object did not have
    seen: set[str] = set()
    out: list[tuple[str, str, str, dict[str, Any] | None]] = []
    for p in doomed:
        if p.key not in seen:
            seen.add(p.key)
            out.append((p.kind, p.key, "delete", None))
    return out


def snapshot_entries() -> list[Put]:
    """Every key the portal owns, from the current database state."""
    out: list[Put] = []
    for model_cls in registered_models():
        reg = registration(model_cls)
        assert reg is not None
        qs = model_cls.objects.all()  # type: ignore[attr-defined]
        for obj in qs.order_by("pk").iterator(chunk_size=500):
            if not _withdrawn(obj):
                out.extend(p for p in reg.build(obj) if p.value is not None)
    return out
