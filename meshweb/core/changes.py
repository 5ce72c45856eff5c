"""What agents learn of portal objects, registered by the app that owns each model.

Each app that pushes changes to agents has a `changes.py` with the builders of its models (an object -> the policy-store
keys it writes, the wire shape of agents.proto.portal_link) and registers them from its AppConfig.ready. The outbox
(meshweb/meshlink) reads this registry only: it imports no domain model, and an app below it never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import models


@dataclass(frozen=True, slots=True)
class Put:
    """A key the object writes; value None: the key must not exist (an optional key the object no longer has)."""

    kind: str
    key: str
    value: dict[str, Any] | None


Builder = Callable[[Any], Iterator[Put]]


@dataclass(frozen=True, slots=True)
class Registration:
    build: Builder
    # Keys written with the object that belong to another of its rows (a tenant's quota, created with it).
    related: Callable[[Any], Iterable[Put]] | None = None
    # True: the object's keys leave the store although its row stays (a revoked key is kept for the audit trail).
    withdrawn: Callable[[Any], bool] | None = None
    # The live dashboard's doorbell for a write of the object: (kind, data, tenant_id), rung after commit.
    doorbell: Callable[[Any], tuple[str, dict[str, Any], int | None]] | None = None


@dataclass
class _Registry:
    builders: dict[type[models.Model], Registration] = field(default_factory=dict)
    # parent model -> {name: objects deleted with a parent by cascade whose keys must go too}
    dependents: dict[type[models.Model], dict[str, Callable[[Any], Iterable[models.Model]]]] = field(
        default_factory=dict
    )


_registry = _Registry()


def register(model: type[models.Model], build: Builder, **options: Any) -> None:
    """Register the builder of `model` (again: replaced, so an app's ready() may run twice)."""
    _registry.builders[model] = Registration(build, **options)


def register_dependents(parent: type[models.Model], name: str, find: Callable[[Any], Iterable[models.Model]]) -> None:
    """Objects deleted with a `parent` (by cascade) whose keys must leave the store with it."""
    _registry.dependents.setdefault(parent, {})[name] = find


def registration(model: type[models.Model]) -> Registration | None:
    return _registry.builders.get(model)


def registered_models() -> list[type[models.Model]]:
    return list(_registry.builders)


def dependents_of(obj: models.Model) -> Iterator[models.Model]:
    """Every object deleted with `obj` whose keys must go too, depth first."""
    for find in _registry.dependents.get(type(obj), {}).values():
        for dep in find(obj):
            yield dep
            yield from dependents_of(dep)
