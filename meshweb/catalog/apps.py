from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def names_in_catalog(tenant: Any, names: list[str]) -> set[str]:
    """The names among `names` that are models of the tenant's catalog."""
    from meshweb.catalog.models import Model

    return set(Model.objects.filter(tenant=tenant, name__in=names).values_list("name", flat=True))


class CatalogConfig(AppConfig):
    name = "meshweb.catalog"
    label = "catalog"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from meshweb.catalog.changes import register_changes
        from meshweb.tenancy.services import register_catalog

        register_changes()  # what agents learn of this app's models (meshweb/core/changes.py)
        register_catalog(names_in_catalog)  # inference keys may name only models of their tenant's catalog
