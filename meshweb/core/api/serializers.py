"""Serializer base that refuses unknown fields instead of silently dropping them."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class StrictMixin:
    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            fields = self.fields  # type: ignore[attr-defined]
            writable = {name for name, field in fields.items() if not field.read_only}
            unknown = sorted(set(data) - writable)
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)  # type: ignore[misc]


class StrictSerializer(StrictMixin, serializers.Serializer):  # type: ignore[type-arg]
    pass


class StrictModelSerializer(StrictMixin, serializers.ModelSerializer):  # type: ignore[type-arg]
    pass
