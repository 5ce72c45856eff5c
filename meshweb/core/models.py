"""Base model pieces shared by the domain apps."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import models
from django.forms.models import model_to_dict


class TimeStamped(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Path from this model to its tenant for row-level restriction ("" = platform-wide object).
    TENANT_PATH: ClassVar[str] = ""

    class Meta:
        abstract = True

    def snapshot(self) -> dict[str, Any]:
        """Field values as plain JSON for audit entries."""
        data = model_to_dict(self)
        data["id"] = self.pk
        return {key: _jsonable(value) for key, value in data.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, models.Model):
        return value.pk
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, str | int | float | bool | dict) or value is None:
        return value
    return str(value)
